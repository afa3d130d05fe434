// SHA-256 (FIPS 180-4), used for the content hashes of checkpoint manifests.
// Contract:
//  - Sha256 hashes a byte stream given in pieces of any size; digest() may be called once, after
//    which the object must not be updated again. sha256() hashes one buffer.
//  - On x86-64 processors with the SHA extensions the block function uses them (chosen once at
//    run time); elsewhere a portable implementation runs. Both give identical digests; the
//    internal entry points below exist so tests can check each against the FIPS vectors.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace engine {

using Sha256Digest = std::array<uint8_t, 32>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  Sha256Digest digest();

 private:
  static constexpr size_t kBlockBytes = 64;
  uint32_t state_[8];
  uint8_t buffer_[kBlockBytes];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

Sha256Digest sha256(const void* data, size_t size);

// Lower-case hexadecimal, 64 characters.
std::string to_hex(const Sha256Digest& digest);

namespace sha256_internal {
// Applies the compression function to `blocks` consecutive 64-byte blocks.
using BlockFunction = void (*)(uint32_t state[8], const uint8_t* data, size_t blocks);
void compress_portable(uint32_t state[8], const uint8_t* data, size_t blocks);
// nullptr when this processor (or build target) lacks the SHA extensions.
BlockFunction hardware_block_function();
// The block function Sha256 uses: the hardware one when present.
BlockFunction selected_block_function();
}  // namespace sha256_internal

}  // namespace engine
