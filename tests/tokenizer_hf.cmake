# Checkpoint tokenizer tests (included by tests/CMakeLists.txt after observability.cmake).

# test_checkpoint_tokenizer runs the kdengine binary itself (exit status of train/check/eval).
if(TARGET test_checkpoint_tokenizer)
  add_dependencies(test_checkpoint_tokenizer kdengine)
  target_compile_definitions(test_checkpoint_tokenizer PRIVATE KD_KDENGINE_BIN="$<TARGET_FILE:kdengine>")
endif()

# --- HF's AutoTokenizer reads a checkpoint's tokenizer and encodes as kdengine does -------------
# A tiny GPT-2 BPE training run (test_checkpoint_tokenizer) leaves its checkpoint and kdengine's ids
# for a set of texts; tools/check_hf_tokenizer.py loads the checkpoint with
# transformers.AutoTokenizer.from_pretrained and compares the ids. The python is KD_PYTHON (see
# observability.cmake); without transformers and tokenizers installed there the check is reported
# as skipped (tools/setup.sh installs both in the test venv).
if(NOT DEFINED kd_python)
  set(kd_python "${KD_PYTHON}")
  if(NOT kd_python)
    find_program(KD_PYTHON3_EXECUTABLE NAMES python3 python)
    set(kd_python "${KD_PYTHON3_EXECUTABLE}")
  endif()
endif()

set(kd_hf_tok_dir ${CMAKE_CURRENT_BINARY_DIR}/hf_tokenizer_check)
add_test(NAME hf_tokenizer_checkpoint
         COMMAND test_checkpoint_tokenizer --gtest_filter=CkptTokTest.CheckpointForHfAutoTokenizer)
set_tests_properties(hf_tokenizer_checkpoint PROPERTIES
  LABELS cpu
  ENVIRONMENT "KD_KEEP_HF_TOKENIZER_DIR=${kd_hf_tok_dir}"
  FIXTURES_SETUP kd_hf_tok
  SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")

if(kd_python)
  add_test(NAME hf_tokenizer_python_check
           COMMAND ${kd_python} ${CMAKE_SOURCE_DIR}/tools/check_hf_tokenizer.py --skip-code 77
                   --save-hf ${kd_hf_tok_dir}/saved_by_hf ${kd_hf_tok_dir}/expected_ids.json)
  set_tests_properties(hf_tokenizer_python_check PROPERTIES
    LABELS cpu SKIP_RETURN_CODE 77 FIXTURES_REQUIRED kd_hf_tok FIXTURES_SETUP kd_hf_saved)
else()
  add_test(NAME hf_tokenizer_python_check
           COMMAND ${CMAKE_COMMAND} -E echo "KD_SKIP: no python found; set KD_PYTHON")
  set_tests_properties(hf_tokenizer_python_check PROPERTIES LABELS cpu SKIP_REGULAR_EXPRESSION "KD_SKIP:")
endif()

# The other direction: the same checkpoint saved by transformers (HF's own tokenizer.json, no
# vocab.json / merges.txt) is read by kdengine as the same GPT-2 BPE and encodes the same ids.
add_test(NAME hf_tokenizer_json_read
         COMMAND test_checkpoint_tokenizer --gtest_filter=CkptTokTest.ReadsTokenizerJsonSavedByHf)
set_tests_properties(hf_tokenizer_json_read PROPERTIES
  LABELS cpu
  ENVIRONMENT "KD_HF_SAVED_DIR=${kd_hf_tok_dir}/saved_by_hf;KD_HF_EXPECTED_IDS=${kd_hf_tok_dir}/expected_ids.json"
  FIXTURES_REQUIRED kd_hf_saved
  SKIP_REGULAR_EXPRESSION "\\[  SKIPPED \\]")
