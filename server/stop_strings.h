// Stop strings over text that grows a piece at a time: where the first one starts, and how much
// of the text can be sent to the client without sending the start of one the next pieces might
// complete (that text is held back until it is known not to be a stop).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace itera::server {

// The position of the earliest stop string in text[from, end), or std::string::npos.
size_t find_stop(std::string_view text, size_t from, const std::vector<std::string>& stops);

// The length of the longest prefix of `text` that no stop string can start in: text minus its
// longest suffix that is a proper prefix of a stop string. With no stop string occurring in
// `text`, every later match starts at or after it.
size_t releasable(std::string_view text, const std::vector<std::string>& stops);

}  // namespace itera::server
