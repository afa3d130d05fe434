// Safetensors reader/writer tests. Every validation rule gets a hand-crafted bad file (written to
// a temporary directory and opened like a real checkpoint) and the test asserts that the one-line
// error names the problem. Valid files check that data round-trips bit for bit, and that writes
// are atomic: a failed write leaves the previous file untouched and no temporary file behind.
#include "model/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "engine/io.h"

namespace engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

fs::path make_temp_dir() {
  std::string pattern = (fs::path(::testing::TempDir()) / "safetensors_test_XXXXXX").string();
  const char* dir = ::mkdtemp(pattern.data());
  EXPECT_NE(dir, nullptr);
  return fs::path(pattern);
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_raw(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A file whose length prefix is the header's true length, followed by `data_bytes` zero bytes.
std::string crafted(const std::string& header, size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

class SafetensorsValidation : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = make_temp_dir(); }
  void TearDown() override { fs::remove_all(dir_); }

  // Writes `bytes` to a file, opens it, and returns the error message ("" if it opened).
  std::string open_error(const std::string& bytes) {
    const fs::path p = dir_ / "crafted.safetensors";
    write_raw(p, bytes);
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(p);
    // The pure parser must agree with the file reader on every input.
    absl::StatusOr<SafetensorsHeader> h = parse_safetensors_header(
        reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), p.string());
    EXPECT_EQ(f.ok(), h.ok());
    if (f.ok()) return "";
    const std::string message(f.status().message());
    EXPECT_THAT(message, HasSubstr("crafted.safetensors"));  // errors name the file
    EXPECT_EQ(message.find('\n'), std::string::npos);        // and are one line
    return message;
  }

  fs::path dir_;
};

constexpr char kOneF32[] = R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})";

TEST_F(SafetensorsValidation, AcceptsMinimalFile) {
  EXPECT_EQ(open_error(crafted(kOneF32, 4)), "");
  EXPECT_EQ(open_error(crafted("{}", 0)), "");
}

TEST_F(SafetensorsValidation, FileShorterThanLengthPrefix) {
  EXPECT_THAT(open_error(std::string(5, '\0')), HasSubstr("too short for the 8-byte header"));
  EXPECT_THAT(open_error(""), HasSubstr("file is 0 bytes"));
}

TEST_F(SafetensorsValidation, HeaderLengthAboveLimit) {
  EXPECT_THAT(open_error(le64(kMaxSafetensorsHeaderBytes + 1) + "{}"),
              HasSubstr("header length 100000001 exceeds the limit"));
  EXPECT_THAT(open_error(le64(~uint64_t{0}) + "{}"), HasSubstr("exceeds the limit"));
}

TEST_F(SafetensorsValidation, HeaderLengthBeyondFile) {
  EXPECT_THAT(open_error(le64(1000) + "{}"), HasSubstr("header length 1000 runs past the end"));
}

TEST_F(SafetensorsValidation, HeaderNotUtf8) {
  EXPECT_THAT(open_error(crafted("{\"t\xff\":1}", 0)), HasSubstr("not valid UTF-8"));
  // An overlong encoding of '/' and a lone surrogate are malformed too.
  EXPECT_THAT(open_error(crafted("{\"\xc0\xaf\":1}", 0)), HasSubstr("not valid UTF-8"));
  EXPECT_THAT(open_error(crafted("{\"\xed\xa0\x80\":1}", 0)), HasSubstr("not valid UTF-8"));
}

TEST_F(SafetensorsValidation, HeaderNotJson) {
  EXPECT_THAT(open_error(crafted(R"({"t":)", 0)), HasSubstr("not valid JSON"));
  // nlohmann would stop at a NUL and ignore the rest; the reader must not.
  EXPECT_THAT(open_error(crafted(std::string("{}\0garbage", 10), 0)),
              HasSubstr("not valid JSON: NUL byte at header offset 2"));
}

TEST_F(SafetensorsValidation, HeaderNotObject) {
  EXPECT_THAT(open_error(crafted("[1, 2]", 0)), HasSubstr("header is not a JSON object"));
  EXPECT_THAT(open_error(crafted("\"x\"", 0)), HasSubstr("header is not a JSON object"));
}

TEST_F(SafetensorsValidation, EntryFields) {
  EXPECT_THAT(open_error(crafted(R"({"t":[1]})", 0)), HasSubstr("tensor t: entry is not a JSON"));
  EXPECT_THAT(open_error(crafted(R"({"t":{"shape":[1],"data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor t: missing field dtype"));
  EXPECT_THAT(open_error(crafted(R"({"t":{"dtype":"F32","data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor t: missing field shape"));
  EXPECT_THAT(open_error(crafted(R"({"t":{"dtype":"F32","shape":[1]}})", 4)),
              HasSubstr("tensor t: missing field data_offsets"));
  EXPECT_THAT(open_error(crafted(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0]}})", 4)),
              HasSubstr("data_offsets is not an array of two integers"));
}

TEST_F(SafetensorsValidation, UnknownDtype) {
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor w: unknown dtype \"F7\""));
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor w: field dtype is not a string"));
}

TEST_F(SafetensorsValidation, BadShape) {
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor w: shape dimension -1 is not a non-negative"));
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}})", 4)),
              HasSubstr("shape dimension 1.5"));
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":"1","data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor w: field shape is not an array"));
}

TEST_F(SafetensorsValidation, SizeMismatch) {
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", 4)),
              HasSubstr("tensor w: shape [2] F32 needs 8 bytes but data offsets [0, 4) hold 4"));
}

TEST_F(SafetensorsValidation, OffsetsEndBeforeBegin) {
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[4,0]}})", 4)),
              HasSubstr("tensor w: data offsets [4, 0) end before they begin"));
}

TEST_F(SafetensorsValidation, FirstTensorNotAtZero) {
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
              HasSubstr("tensor w: data offsets [4, 8) do not start at 0"));
}

TEST_F(SafetensorsValidation, GapBetweenTensors) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";
  EXPECT_THAT(open_error(crafted(h, 12)), HasSubstr("tensor b: data offsets [8, 12) leave a gap"));
}

TEST_F(SafetensorsValidation, OverlappingTensors) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  EXPECT_THAT(open_error(crafted(h, 8)),
              HasSubstr("tensor b: data offsets [4, 8) overlap the previous tensor"));
}

// The header's key order is free (older writers sorted by name); offsets decide the layout.
TEST_F(SafetensorsValidation, UnsortedEntriesAreOrderedByOffset) {
  const std::string h = R"({"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("a":{"dtype":"F16","shape":[2, 3],"data_offsets":[4,16]}})";
  std::string bytes = crafted(h, 16);
  const float z = 3.5f;
  std::memcpy(bytes.data() + 8 + h.size(), &z, sizeof z);
  ASSERT_EQ(open_error(bytes), "");
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(dir_ / "crafted.safetensors");
  ASSERT_TRUE(f.ok());
  ASSERT_EQ(f->header().tensors.size(), 2u);
  EXPECT_EQ(f->header().tensors[0].name, "z");
  EXPECT_EQ(f->header().tensors[1].name, "a");
  EXPECT_EQ(f->header().tensors[1].shape, (std::vector<int64_t>{2, 3}));
  float read;
  std::memcpy(&read, f->tensor_data(*f->header().find("z")), sizeof read);
  EXPECT_EQ(read, z);
}

TEST_F(SafetensorsValidation, TrailingBytes) {
  EXPECT_THAT(open_error(crafted(kOneF32, 6)), HasSubstr("2 trailing bytes after the last tensor"));
  EXPECT_THAT(open_error(crafted("{}", 1)), HasSubstr("1 trailing bytes"));
}

TEST_F(SafetensorsValidation, TensorBeyondFile) {
  EXPECT_THAT(open_error(crafted(kOneF32, 2)),
              HasSubstr("tensor t: data offsets [0, 4) run past the end of the 2-byte data"));
}

TEST_F(SafetensorsValidation, HugeNumbersOverflow) {
  // 2^62 * 4 elements overflow int64; 2^61 * 2 elements of 4 bytes overflow the byte count.
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":[4611686018427387904, 4],)"
                                 R"("data_offsets":[0,4]}})",
                                 4)),
              HasSubstr("tensor w: element count of shape [4611686018427387904,4] overflows"));
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"F32","shape":[2305843009213693952, 2],)"
                                 R"("data_offsets":[0,4]}})",
                                 4)),
              HasSubstr("tensor w: byte size of shape"));
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"U8","shape":[1],)"
                                 R"("data_offsets":[18446744073709551615,0]}})",
                                 1)),
              HasSubstr("are not non-negative 64-bit integers"));
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1e30]}})", 1)),
              HasSubstr("are not non-negative 64-bit integers"));
  // Offsets far beyond the file, consistent with the shape: must fail, not read out of bounds.
  EXPECT_THAT(open_error(crafted(R"({"w":{"dtype":"U8","shape":[4611686018427387904],)"
                                 R"("data_offsets":[0,4611686018427387904]}})",
                                 1)),
              HasSubstr("run past the end"));
}

TEST_F(SafetensorsValidation, DuplicateNames) {
  const std::string h = R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                        R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  EXPECT_THAT(open_error(crafted(h, 8)), HasSubstr("duplicate tensor name \"a\""));
  EXPECT_THAT(open_error(crafted(R"({"a":{"dtype":"F32","dtype":"F16","shape":[1],)"
                                 R"("data_offsets":[0,4]}})",
                                 4)),
              HasSubstr("duplicate key \"dtype\""));
}

TEST_F(SafetensorsValidation, MetadataMustBeStringMap) {
  EXPECT_THAT(open_error(crafted(R"({"__metadata__":{"format":1}})", 0)),
              HasSubstr("__metadata__ value of \"format\" is not a string"));
  EXPECT_THAT(open_error(crafted(R"({"__metadata__":["pt"]})", 0)),
              HasSubstr("__metadata__ is not a JSON object"));
  ASSERT_EQ(open_error(crafted(R"({"__metadata__":{"format":"pt","x":"y"}})", 0)), "");
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(dir_ / "crafted.safetensors");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->header().metadata.at("format"), "pt");
  EXPECT_EQ(f->header().metadata.at("x"), "y");
  EXPECT_TRUE(f->header().tensors.empty());
}

TEST(Utf8, ValidatorAcceptsAndRejects) {
  EXPECT_TRUE(is_valid_utf8("plain ascii"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_FALSE(is_valid_utf8("\x80"));                                 // stray continuation
  EXPECT_FALSE(is_valid_utf8("\xe2\x82"));                             // truncated
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));                     // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xe0\x80\xaf"));                         // overlong
}

class SafetensorsWrite : public SafetensorsValidation {};

std::vector<uint8_t> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (uint8_t& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

// Any bit pattern stored in the file's own dtype comes back unchanged.
TEST_F(SafetensorsWrite, RoundTripIsBitIdentical) {
  for (DType dtype : {DType::kF32, DType::kF16, DType::kBF16}) {
    const std::vector<int64_t> shape_a{3, 5};
    const std::vector<int64_t> shape_b{7};
    const size_t es = dtype_size(dtype);
    const std::vector<uint8_t> a = random_bytes(15 * es, 1);
    const std::vector<uint8_t> b = random_bytes(7 * es, 2);
    const fs::path p = dir_ / "rt.safetensors";
    ASSERT_TRUE(write_safetensors(p, {{"layer.a", shape_a, dtype, dtype, a.data()},
                                      {"b", shape_b, dtype, dtype, b.data()},
                                      {"empty", {0, 4}, dtype, dtype, nullptr}})
                    .ok());
    absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(p);
    ASSERT_TRUE(f.ok()) << f.status();
    const SafetensorsHeader& h = f->header();
    EXPECT_EQ(h.header_bytes % 8, 0u);  // every tensor starts 8-byte aligned
    EXPECT_EQ(h.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
    ASSERT_EQ(h.tensors.size(), 3u);
    EXPECT_EQ(h.tensors[0].name, "layer.a");  // written in the caller's order
    EXPECT_EQ(h.tensors[0].dtype, dtype);
    EXPECT_EQ(h.tensors[0].shape, shape_a);
    EXPECT_EQ(std::memcmp(f->tensor_data(*h.find("layer.a")), a.data(), a.size()), 0);
    EXPECT_EQ(std::memcmp(f->tensor_data(*h.find("b")), b.data(), b.size()), 0);
    EXPECT_EQ(h.find("empty")->numel, 0);
  }
}

// f32 sources stored as f16/bf16: values exactly representable in both give known bit patterns.
TEST_F(SafetensorsWrite, NarrowsF32OnWrite) {
  const std::vector<float> values{1.5f, -2.0f, 0.25f, 0.0f};
  const std::vector<uint16_t> f16_bits{0x3e00, 0xc000, 0x3400, 0x0000};
  const std::vector<uint16_t> bf16_bits{0x3fc0, 0xc000, 0x3e80, 0x0000};
  const fs::path p = dir_ / "narrow.safetensors";
  ASSERT_TRUE(write_safetensors(p, {{"h", {4}, DType::kF16, DType::kF32, values.data()},
                                    {"b", {4}, DType::kBF16, DType::kF32, values.data()}})
                  .ok());
  absl::StatusOr<SafetensorsFile> f = SafetensorsFile::open(p);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(std::memcmp(f->tensor_data(*f->header().find("h")), f16_bits.data(), 8), 0);
  EXPECT_EQ(std::memcmp(f->tensor_data(*f->header().find("b")), bf16_bits.data(), 8), 0);
  EXPECT_EQ(f->header().find("h")->dtype_name, "F16");
}

TEST_F(SafetensorsWrite, SameInputSameBytes) {
  const std::vector<uint8_t> a = random_bytes(64, 3);
  const std::vector<SafetensorsWriteEntry> entries{{"x", {16}, DType::kF32, DType::kF32, a.data()}};
  ASSERT_TRUE(write_safetensors(dir_ / "one.safetensors", entries).ok());
  ASSERT_TRUE(write_safetensors(dir_ / "two.safetensors", entries).ok());
  EXPECT_EQ(read_file(dir_ / "one.safetensors"), read_file(dir_ / "two.safetensors"));
}

TEST_F(SafetensorsWrite, RejectsBadEntries) {
  const float x = 1.0f;
  absl::Status dup = write_safetensors(
      dir_ / "d.safetensors",
      {{"x", {1}, DType::kF32, DType::kF32, &x}, {"x", {1}, DType::kF32, DType::kF32, &x}});
  EXPECT_THAT(std::string(dup.message()), HasSubstr("tensor x: duplicate name"));
  absl::Status widen =
      write_safetensors(dir_ / "w.safetensors", {{"x", {1}, DType::kF32, DType::kF16, &x}});
  EXPECT_THAT(std::string(widen.message()), HasSubstr("cannot store F16 data as F32"));
  EXPECT_FALSE(fs::exists(dir_ / "d.safetensors"));
}

// Lists the directory's entries other than `keep` (to find stray temporary files).
std::vector<std::string> other_entries(const fs::path& dir, const std::string& keep) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().filename() != keep) names.push_back(e.path().filename().string());
  }
  return names;
}

TEST_F(SafetensorsWrite, FailedWriteKeepsOldFileAndLeavesNoTemporary) {
  const fs::path target = dir_ / "model.safetensors";
  write_raw(target, "old contents");
  // The body writes part of the new file, then fails: nothing may be committed.
  absl::Status s = write_file_atomically(target, [](AtomicFileWriter& w) {
    EXPECT_TRUE(w.write("new", 3).ok());
    return absl::DataLossError("injected failure");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(read_file(target), "old contents");
  EXPECT_THAT(other_entries(dir_, "model.safetensors"), ::testing::IsEmpty());

  // A real system-level failure: the final rename over a non-empty directory fails.
  const fs::path blocked = dir_ / "blocked.safetensors";
  fs::create_directories(blocked / "inside");
  const float x = 1.0f;
  absl::Status r = write_safetensors(blocked, {{"x", {1}, DType::kF32, DType::kF32, &x}});
  EXPECT_FALSE(r.ok());
  EXPECT_THAT(std::string(r.message()), HasSubstr("blocked.safetensors"));
  EXPECT_TRUE(fs::is_directory(blocked / "inside"));
  std::vector<std::string> rest = other_entries(dir_, "model.safetensors");
  EXPECT_EQ(rest, std::vector<std::string>{"blocked.safetensors"});
}

TEST_F(SafetensorsWrite, ParentIsAFile) {
  write_raw(dir_ / "plain", "x");
  const float x = 1.0f;
  absl::Status s = write_safetensors(dir_ / "plain" / "m.safetensors",
                                     {{"x", {1}, DType::kF32, DType::kF32, &x}});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("cannot create temporary file"));
  EXPECT_EQ(read_file(dir_ / "plain"), "x");
}

TEST_F(SafetensorsWrite, SuccessfulWriteReplacesOldFile) {
  const fs::path target = dir_ / "c.json";
  write_raw(target, "old");
  ASSERT_TRUE(write_string_atomically(target, "new contents").ok());
  EXPECT_EQ(read_file(target), "new contents");
  EXPECT_THAT(other_entries(dir_, "c.json"), ::testing::IsEmpty());
}

}  // namespace
}  // namespace engine
