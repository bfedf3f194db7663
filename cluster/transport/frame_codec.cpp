#include "cluster/transport/frame_codec.hpp"

#include <algorithm>
#include <cstring>

#include "cluster.pb.h"
#include "runtime/error.hpp"

namespace granary::cluster {

caf::error append_frame(const Frame& frame, size_t max_frame_size,
                        std::string& out) {
  auto size = frame.ByteSizeLong();
  if (size > max_frame_size)
    return make_error(errc::payload_too_large,
                      "frame of " + std::to_string(size)
                          + " bytes exceeds the maximum frame size of "
                          + std::to_string(max_frame_size) + " bytes");
  auto offset = out.size();
  out.resize(offset + frame_header_size + size);
  auto* p = reinterpret_cast<uint8_t*>(out.data() + offset);
  p[0] = static_cast<uint8_t>(size >> 24);
  p[1] = static_cast<uint8_t>(size >> 16);
  p[2] = static_cast<uint8_t>(size >> 8);
  p[3] = static_cast<uint8_t>(size);
  frame.SerializeWithCachedSizesToArray(p + frame_header_size);
  return {};
}

frame_decoder::frame_decoder(size_t max_frame_size, size_t read_chunk)
    : max_frame_size_(max_frame_size)
    , read_chunk_(std::max<size_t>(read_chunk, 64)) {
  // A frame size that does not fit the 4-byte prefix could never be read.
  max_frame_size_ = std::min<size_t>(max_frame_size_, UINT32_MAX);
}

std::span<char> frame_decoder::prepare() {
  if (begin_ == end_) {
    begin_ = end_ = 0;
    // Give back the memory of an earlier large frame.
    if (buf_.size() > 4 * read_chunk_)
      std::vector<char>().swap(buf_);
  }
  // Bytes the current frame needs in total, bounded by the maximum frame
  // size.
  size_t needed = frame_header_size;
  if (buffered() >= frame_header_size) {
    auto* p = reinterpret_cast<const uint8_t*>(buf_.data() + begin_);
    size_t len = (size_t{p[0]} << 24) | (size_t{p[1]} << 16)
                 | (size_t{p[2]} << 8) | size_t{p[3]};
    // An oversized prefix gets no room: `next` rejects it.
    if (len <= max_frame_size_)
      needed = frame_header_size + len;
  }
  if (begin_ > 0 && buf_.size() - end_ < read_chunk_) {
    std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
  auto want = std::max(read_chunk_, needed);
  if (buf_.size() < want)
    buf_.resize(want);
  if (buf_.size() == end_)
    buf_.resize(end_ + read_chunk_);
  return {buf_.data() + end_, buf_.size() - end_};
}

void frame_decoder::commit(size_t n) {
  end_ += std::min(n, buf_.size() - end_);
}

frame_decoder::result frame_decoder::next(Frame& out) {
  if (!error_.empty())
    return result::error;
  if (buffered() < frame_header_size)
    return result::need_more;
  auto* p = reinterpret_cast<const uint8_t*>(buf_.data() + begin_);
  size_t len = (size_t{p[0]} << 24) | (size_t{p[1]} << 16) | (size_t{p[2]} << 8)
               | size_t{p[3]};
  if (len > max_frame_size_) {
    error_ = "frame length prefix of " + std::to_string(len)
             + " bytes exceeds the maximum frame size of "
             + std::to_string(max_frame_size_) + " bytes";
    return result::error;
  }
  if (buffered() < frame_header_size + len)
    return result::need_more;
  if (!out.ParseFromArray(p + frame_header_size, static_cast<int>(len))) {
    error_ = "frame of " + std::to_string(len)
             + " bytes does not parse as granary.cluster.Frame";
    return result::error;
  }
  if (out.body_case() == Frame::BODY_NOT_SET) {
    error_ = "frame of " + std::to_string(len) + " bytes has no known body";
    return result::error;
  }
  begin_ += frame_header_size + len;
  return result::frame;
}

void frame_decoder::reset() {
  begin_ = end_ = 0;
  error_.clear();
  if (buf_.size() > 4 * read_chunk_)
    std::vector<char>().swap(buf_);
}

} // namespace granary::cluster
