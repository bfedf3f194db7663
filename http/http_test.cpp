// The HTTP layer: the router on its own.

#include <string>

#include <gtest/gtest.h>

#include "http/router.hpp"
#include "http/server.hpp"

using namespace granary::http;

namespace {

handler answer_with(std::string body) {
  return [body](request, responder res) {
    response r;
    r.body = body;
    res.send(std::move(r));
  };
}

} // namespace

// -- router -------------------------------------------------------------------

TEST(http_router, matches_templates_and_decodes_parameters) {
  router r;
  r.add(verb::get, "/healthz", answer_with("h"))
      .add(verb::get, "/v1/workflows/{type}/{id}", answer_with("d"))
      .add(verb::post, "/v1/workflows/{type}/{id}/start", answer_with("s"))
      .add(verb::delete_, "/v1/dead-letters/{type}/{key}/{msg_id}",
           answer_with("x"));
  auto m = r.match(verb::post, "/v1/workflows/my.flow/a%20b%2Fc/start");
  ASSERT_NE(m.target, nullptr) << m.error.message;
  ASSERT_EQ(m.params.size(), 2u);
  EXPECT_EQ(m.params[0],
            (std::pair<std::string, std::string>{"type", "my.flow"}));
  // %2F is decoded inside its segment, after the split.
  EXPECT_EQ(m.params[1].second, "a b/c");
  // One trailing slash is ignored; an empty segment is a parameter's value.
  EXPECT_NE(r.match(verb::get, "/healthz/").target, nullptr);
  auto empty = r.match(verb::post, "/v1/workflows/t//start");
  ASSERT_NE(empty.target, nullptr);
  EXPECT_EQ(empty.params[1].second, "");
  EXPECT_EQ(r.match(verb::delete_, "/v1/dead-letters/t/k/").error.status, 404u);
}

TEST(http_router, answers_404_405_and_400_itself) {
  router r;
  r.add(verb::get, "/v1/things/{id}", answer_with("get"))
      .add(verb::put, "/v1/things/{id}", answer_with("put"));
  auto none = r.match(verb::get, "/v1/other/x");
  EXPECT_EQ(none.target, nullptr);
  EXPECT_EQ(none.error.status, 404u);
  EXPECT_EQ(none.error.message, "no endpoint /v1/other/x");
  auto deep = r.match(verb::get, "/v1/things/x/y/z/w/v");
  EXPECT_EQ(deep.error.status, 404u);
  auto wrong = r.match(verb::post, "/v1/things/x");
  EXPECT_EQ(wrong.target, nullptr);
  EXPECT_EQ(wrong.error.status, 405u);
  EXPECT_EQ(wrong.error.allow, "GET, PUT");
  EXPECT_EQ(wrong.error.message, "use GET or PUT /v1/things/x");
  auto bad = r.match(verb::get, "/v1/things/%zz");
  EXPECT_EQ(bad.error.status, 400u);
  EXPECT_EQ(r.match(verb::get, "things").error.status, 400u);
}

TEST(http_router, a_literal_segment_beats_a_parameter) {
  router r;
  r.add(verb::get, "/v1/{kind}", answer_with("list"))
      .add(verb::get, "/v1/_audit", answer_with("audit"))
      .add(verb::get, "/v1/{kind}/{name}", answer_with("get"))
      .any("/v1/{kind}/_all", answer_with("all"));
  auto audit = r.match(verb::get, "/v1/_audit");
  ASSERT_NE(audit.target, nullptr);
  EXPECT_TRUE(audit.params.empty());
  auto list = r.match(verb::get, "/v1/cell");
  ASSERT_EQ(list.params.size(), 1u);
  EXPECT_EQ(list.params[0].second, "cell");
  auto all = r.match(verb::patch, "/v1/cell/_all");
  ASSERT_NE(all.target, nullptr);
  EXPECT_EQ(all.params.size(), 1u);
  // The literal template lacks POST: 405, not the parameter's route.
  EXPECT_EQ(r.match(verb::post, "/v1/_audit").error.status, 405u);
}

TEST(http_router, percent_coding_round_trips) {
  EXPECT_EQ(percent_encode("a b/c~é"), "a%20b%2Fc~%C3%A9");
  EXPECT_EQ(percent_decode("a%20b%2Fc~%C3%A9"), "a b/c~\xC3\xA9");
  EXPECT_EQ(percent_decode("%41%4a%4A"), "AJJ");
  EXPECT_FALSE(percent_decode("%"));
  EXPECT_FALSE(percent_decode("%4"));
  EXPECT_FALSE(percent_decode("ab%4"));
  EXPECT_FALSE(percent_decode("%g1"));
  EXPECT_FALSE(percent_decode("%+1"));
  auto q = parse_query("/x?type=a%20b&limit=3&flag&type=c");
  ASSERT_TRUE(q);
  EXPECT_EQ(q->at("type"), "c");
  EXPECT_EQ(q->at("limit"), "3");
  EXPECT_EQ(q->at("flag"), "");
  EXPECT_FALSE(parse_query("/x?a=%zz"));
  EXPECT_TRUE(parse_query("/x")->empty());
}
