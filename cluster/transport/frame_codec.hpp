#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <caf/error.hpp>

namespace granary::cluster {

class Frame;

/// Size of the big-endian length prefix in front of every frame.
inline constexpr size_t frame_header_size = 4;

/// Appends `frame` with its length prefix to `out`. Fails with
/// `payload_too_large` when the serialized frame exceeds `max_frame_size`;
/// `out` is unchanged then.
caf::error append_frame(const Frame& frame, size_t max_frame_size,
                        std::string& out);

/// Splits a byte stream from an untrusted peer into frames. The length prefix
/// is checked against the maximum frame size before any memory is reserved
/// for the frame, so the buffer never exceeds
/// max(read_chunk, frame_header_size + max_frame_size) bytes.
class frame_decoder {
public:
  /// Outcome of `next`.
  enum class result {
    /// `out` holds the next frame.
    frame,
    /// The buffered bytes end inside a frame; read more.
    need_more,
    /// The stream is broken (oversized or unparsable frame); see `error()`.
    error,
  };

  /// Creates a decoder that accepts frames of up to `max_frame_size` bytes
  /// and reads in chunks of `read_chunk` bytes.
  explicit frame_decoder(size_t max_frame_size, size_t read_chunk = 65536);

  /// Returns a non-empty region to read the next bytes into.
  std::span<char> prepare();

  /// Marks the first `n` bytes of the last `prepare()` region as filled.
  void commit(size_t n);

  /// Extracts the next complete frame into `out`.
  result next(Frame& out);

  /// Describes why `next` returned `result::error`.
  const std::string& error() const {
    return error_;
  }

  /// Number of buffered bytes that do not form a complete frame yet.
  size_t buffered() const {
    return end_ - begin_;
  }

  /// Drops all buffered bytes and the error, e.g. for a new connection.
  void reset();

private:
  size_t max_frame_size_;
  size_t read_chunk_;
  std::vector<char> buf_;
  size_t begin_ = 0;
  size_t end_ = 0;
  std::string error_;
};

} // namespace granary::cluster
