// CRC-32C (Castagnoli): the checksum of TFRecord framing (TensorBoard event files).
// Reflected polynomial 0x82F63B78, initial value and final xor 0xFFFFFFFF.
#pragma once

#include <cstddef>
#include <cstdint>

namespace kd {

// CRC-32C of n bytes. To checksum data in pieces, pass the previous result as `crc`:
// crc32c(b, nb, crc32c(a, na)) == crc32c(a+b).
uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);

// TFRecord's masked CRC: rotate right by 15 bits, add 0xa282ead8 (mod 2^32). Masking keeps a
// CRC stored inside checksummed data from looking like the CRC of that data.
inline uint32_t crc32c_mask(uint32_t crc) {
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

}  // namespace kd
