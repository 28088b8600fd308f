#!/usr/bin/env bash
# Puts the corpora the shipped recipes read into data/ (ignored by git):
#   data/tinyshakespeare/input.txt      Tiny Shakespeare (char-rnn), 1,115,394 bytes
#   data/gpt2-bpe/encoder.json          GPT-2's BPE vocabulary
#   data/gpt2-bpe/vocab.bpe             GPT-2's BPE merges
# Each file is downloaded where the network allows; otherwise it is copied from a local copy, by
# default ../shared/data next to the repository (KD_SHARED_DATA or --from DIR names another), with
# the same layout. Every file is checked against its SHA-256, and the script says for each file what
# it did. A file already in data/ with the right checksum is kept.
#
#   bash tools/get_data.sh [--offline] [--from DIR]
#
# --offline skips the download. Exit status 0 when all three files are in place, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

FROM="${KD_SHARED_DATA:-../shared/data}"
OFFLINE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --offline) OFFLINE=1 ;;
    --from) FROM="${2:?--from needs a folder}"; shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "get_data: unknown option '$1' (try --help)" >&2; exit 2 ;;
  esac
  shift
done

# path in data/ | SHA-256 | where to download it
FILES=(
  "tinyshakespeare/input.txt|86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed|https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
  "gpt2-bpe/encoder.json|196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783|https://openaipublic.blob.core.windows.net/gpt-2/models/124M/encoder.json"
  "gpt2-bpe/vocab.bpe|1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5|https://openaipublic.blob.core.windows.net/gpt-2/models/124M/vocab.bpe"
)

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

download() {  # url dest: true when the file arrived
  if command -v curl >/dev/null; then
    curl -fsSL --connect-timeout 10 --max-time 300 -o "$2" "$1" 2>/dev/null
  elif command -v wget >/dev/null; then
    wget -q --timeout=10 -O "$2" "$1"
  else
    return 1
  fi
}

failed=0
for entry in "${FILES[@]}"; do
  IFS='|' read -r rel sha url <<<"$entry"
  dest="data/$rel"
  mkdir -p "$(dirname "$dest")"
  if sha_ok "$dest" "$sha"; then
    echo "get_data: $dest: already there"
    continue
  fi
  tmp="$dest.part"
  rm -f "$tmp"
  if [ "$OFFLINE" = 0 ] && download "$url" "$tmp" && sha_ok "$tmp" "$sha"; then
    mv "$tmp" "$dest"
    echo "get_data: $dest: downloaded from $url"
    continue
  fi
  why="offline"
  [ "$OFFLINE" = 1 ] || why="download failed"
  [ -f "$tmp" ] && why="the download's checksum did not match"
  rm -f "$tmp"
  if sha_ok "$FROM/$rel" "$sha"; then
    cp "$FROM/$rel" "$tmp" && chmod 644 "$tmp" && mv "$tmp" "$dest"
    echo "get_data: $dest: copied from $FROM/$rel ($why)"
  elif [ -f "$FROM/$rel" ]; then
    echo "get_data: $dest: MISSING ($why; $FROM/$rel has another checksum)" >&2
    failed=1
  else
    echo "get_data: $dest: MISSING ($why; no $FROM/$rel)" >&2
    failed=1
  fi
done
if [ "$failed" = 1 ]; then
  echo "get_data: fetch the missing files by hand into data/ (URLs in $0), or pass --from DIR" >&2
  exit 1
fi
