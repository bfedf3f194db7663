#pragma once

#include <chrono>

#include "actors/workflow_client.hpp"
#include "cluster/transport/transport.hpp"
#include "gateway/gateway_client.hpp"

namespace granary::cluster {

/// The `workflow_client` over a silo's HTTP gateway: the same typed API as
/// `silo_workflow_client`, for a process that runs no silo. Messages
/// travel as protobuf's JSON mapping through the gateway's grain calls and
/// sends (`/v1/grains/{type}/{id}/call|send` with the `granary.wire`
/// workflow messages), so typed inputs, outputs and query values arrive
/// byte for byte, and `describe` shows everything `WorkflowInfo` holds.
/// `result` waits on the gateway (`/v1/workflows/{type}/{id}/result`,
/// in rounds of at most half the request timeout), not by polling. Errors
/// are the gateway's, turned back into their `errc` (see
/// `gateway_client`). Not thread-safe: use one per thread.
class http_workflow_client : public workflow_client {
public:
  /// A client of the gateway at `server`; each HTTP request must complete
  /// within `request_timeout`.
  explicit http_workflow_client(endpoint server, milliseconds request_timeout
                                                 = std::chrono::seconds{30});

  ~http_workflow_client() override;

protected:
  caf::error call(const grain_id& id, const google::protobuf::Message& request,
                  google::protobuf::Message& reply) override;

  caf::error send(const grain_id& id, const google::protobuf::Message& msg,
                  const std::string& msg_id) override;

  caf::expected<wire::WorkflowInfo>
  await_finished(const grain_id& id, clock::time_point deadline) override;

private:
  gateway_client gateway_;
  milliseconds request_timeout_;
};

} // namespace granary::cluster
