// SHA-256 (engine/sha256.h) against the FIPS 180 example vectors and against digests of patterned
// messages computed by Python's hashlib (an independent implementation), at the lengths where the
// padding changes shape; the hardware block function (when this processor has one) and the
// portable one must agree everywhere.
#include "engine/sha256.h"

#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace engine {
namespace {

std::string hex_of(const std::string& message) {
  return to_hex(sha256(message.data(), message.size()));
}

TEST(Sha256, FipsExampleVectors) {
  EXPECT_EQ(hex_of("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(hex_of(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex_of("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),  // 448 bits
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(hex_of(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

// Byte i of the message is i mod 251; digests from hashlib.sha256.
TEST(Sha256, PaddingBoundariesMatchAnIndependentImplementation) {
  const std::vector<std::pair<size_t, std::string>> cases = {
      {55, "463eb28e72f82e0a96c0a4cc53690c571281131f672aa229e0d45ae59b598b59"},
      {56, "da2ae4d6b36748f2a318f23e7ab1dfdf45acdc9d049bd80e59de82a60895f562"},
      {63, "29af2686fd53374a36b0846694cc342177e428d1647515f078784d69cdb9e488"},
      {64, "fdeab9acf3710362bd2658cdc9a29e8f9c757fcf9811603a8c447cd1d9151108"},
      {119, "da18797ed7c3a777f0847f429724a2d8cd5138e6ed2895c3fa1a6d39d18f7ec6"},
      {120, "f52b23db1fbb6ded89ef42a23ce0c8922c45f25c50b568a93bf1c075420bbb7c"},
      {1000, "4e4c294b331f7a2099a379bec34b9f9fc03dc46ab465d998f4d683da53487e6d"}};
  for (const auto& [length, want] : cases) {
    std::string message(length, '\0');
    for (size_t i = 0; i < length; ++i) message[i] = static_cast<char>(i % 251);
    EXPECT_EQ(hex_of(message), want) << length << " bytes";
  }
}

// Any split of the stream into update() calls gives the one-shot digest.
TEST(Sha256, PiecewiseUpdatesEqualOneShot) {
  std::mt19937 rng(7);
  std::string message(5000, '\0');
  for (char& c : message) c = static_cast<char>(rng());
  const std::string whole = hex_of(message);
  std::uniform_int_distribution<size_t> piece(0, 150);
  for (int trial = 0; trial < 20; ++trial) {
    Sha256 h;
    for (size_t at = 0; at < message.size();) {
      const size_t n = std::min(piece(rng), message.size() - at);
      h.update(message.data() + at, n);
      at += n;
    }
    EXPECT_EQ(to_hex(h.digest()), whole) << "trial " << trial;
  }
}

TEST(Sha256, HardwareAndPortableBlockFunctionsAgree) {
  const sha256_internal::BlockFunction hardware = sha256_internal::hardware_block_function();
  if (hardware == nullptr) GTEST_SKIP() << "this processor has no SHA extensions";
  std::mt19937 rng(3);
  std::vector<uint8_t> data(64 * 37);
  for (uint8_t& b : data) b = static_cast<uint8_t>(rng());
  for (size_t blocks : {size_t{1}, size_t{2}, size_t{37}}) {
    uint32_t a[8], b[8];
    for (int i = 0; i < 8; ++i) a[i] = b[i] = static_cast<uint32_t>(rng());
    sha256_internal::compress_portable(a, data.data(), blocks);
    hardware(b, data.data(), blocks);
    EXPECT_EQ(std::vector<uint32_t>(a, a + 8), std::vector<uint32_t>(b, b + 8)) << blocks;
  }
}

}  // namespace
}  // namespace engine
