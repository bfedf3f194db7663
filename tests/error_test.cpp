// The error codes are part of the storage format: this test pins every
// number, name and HTTP status, so that a change to the table fails here
// before it reaches stored data.

#include <cstdint>
#include <set>
#include <string>

#include <gtest/gtest.h>

#include "runtime/error.hpp"

using namespace granary;

namespace {

struct pinned {
  errc code;
  uint8_t number;
  const char* name;
  unsigned status;
};

// Written out by hand on purpose: never edit a row, only add new ones.
constexpr pinned pinned_codes[] = {
    {errc::unspecified, 1, "unspecified", 500},
    {errc::unknown_grain_type, 2, "unknown_grain_type", 404},
    {errc::unhandled_message, 3, "unhandled_message", 400},
    {errc::payload_too_large, 4, "payload_too_large", 413},
    {errc::malformed_message, 5, "malformed_message", 400},
    {errc::overloaded, 6, "overloaded", 429},
    {errc::timeout, 7, "timeout", 504},
    {errc::handler_failed, 8, "handler_failed", 500},
    {errc::storage_full, 9, "storage_full", 503},
    {errc::storage_failure, 10, "storage_failure", 503},
    {errc::corrupt_record, 11, "corrupt_record", 500},
    {errc::data_dir_locked, 12, "data_dir_locked", 503},
    {errc::silo_stopped, 13, "silo_stopped", 503},
    {errc::invalid_config, 14, "invalid_config", 400},
    {errc::invalid_argument, 15, "invalid_argument", 400},
    {errc::not_found, 16, "not_found", 404},
    {errc::nondeterminism, 17, "nondeterminism", 500},
    {errc::continued_as_new, 18, "continued_as_new", 500},
    {errc::cancelled, 19, "cancelled", 409},
    {errc::already_exists, 20, "already_exists", 409},
    {errc::not_owner, 21, "not_owner", 503},
    {errc::partition_unavailable, 22, "partition_unavailable", 503},
};

TEST(errc, every_code_keeps_its_number_name_and_status) {
  ASSERT_EQ(std::size(pinned_codes), all_errc.size())
      << "a code was added (add its row here) or removed (drop its row and "
         "keep its number in GRANARY_RETIRED_ERRC)";
  for (size_t i = 0; i < all_errc.size(); ++i) {
    auto& p = pinned_codes[i];
    SCOPED_TRACE(p.name);
    EXPECT_EQ(all_errc[i], p.code);
    EXPECT_EQ(static_cast<uint8_t>(p.code), p.number);
    EXPECT_STREQ(to_string(p.code), p.name);
    EXPECT_EQ(http_status(p.code), p.status);
  }
}

TEST(errc, names_round_trip_and_unknown_names_have_no_code) {
  for (auto code : all_errc) {
    auto back = errc_from_name(to_string(code));
    ASSERT_TRUE(back.has_value()) << to_string(code);
    EXPECT_EQ(*back, code);
  }
  EXPECT_EQ(errc_from_name("bogus"), std::nullopt);
  EXPECT_EQ(errc_from_name(""), std::nullopt);
  EXPECT_EQ(errc_from_name("unknown"), std::nullopt);
  EXPECT_EQ(errc_from_name("Overloaded"), std::nullopt);
}

TEST(errc, every_code_has_a_description_and_an_error_status) {
  std::set<std::string> texts;
  for (auto code : all_errc) {
    SCOPED_TRACE(to_string(code));
    std::string text = describe_code(code);
    EXPECT_FALSE(text.empty());
    EXPECT_TRUE(texts.insert(text).second) << "two codes share a description";
    EXPECT_GE(http_status(code), 400u);
    EXPECT_LE(http_status(code), 599u);
  }
}

TEST(errc, retired_numbers_are_never_live) {
  std::set<uint8_t> live;
  for (auto code : all_errc) {
    auto n = static_cast<uint8_t>(code);
    EXPECT_NE(n, 0) << "0 means no error";
    EXPECT_TRUE(live.insert(n).second) << "number " << int{n} << " twice";
  }
  for (auto n : retired_errc_numbers)
    EXPECT_EQ(live.count(n), 0u) << "retired number " << int{n} << " reused";
}

TEST(errc, a_number_that_is_no_code_reads_as_unknown) {
  // A stored number from a newer version, or a retired one.
  auto stray = static_cast<errc>(200);
  EXPECT_STREQ(to_string(stray), "unknown");
  EXPECT_EQ(http_status(stray), 500u);
  EXPECT_NE(std::string{describe_code(stray)}, "");
  auto err = make_error(stray, "from the future");
  EXPECT_EQ(describe(err), "unknown: from the future");
}

TEST(errc, codes_survive_the_caf_error_round_trip) {
  for (auto code : all_errc) {
    auto err = make_error(code, "why");
    EXPECT_EQ(code_of(err), code);
    EXPECT_EQ(err.code(), static_cast<uint8_t>(code));
    EXPECT_EQ(describe(err), std::string{to_string(code)} + ": why");
  }
}

} // namespace
