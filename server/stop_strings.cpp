#include "server/stop_strings.h"

#include <algorithm>

namespace itera::server {

size_t find_stop(std::string_view text, size_t from, const std::vector<std::string>& stops) {
    size_t first = std::string_view::npos;
    for (const std::string& s : stops) first = std::min(first, text.find(s, from));
    return first;
}

size_t releasable(std::string_view text, const std::vector<std::string>& stops) {
    size_t hold = 0;
    for (const std::string& s : stops)
        for (size_t k = std::min(s.size() - 1, text.size()); k > hold; k--)
            if (text.substr(text.size() - k) == std::string_view(s).substr(0, k)) {
                hold = k;
                break;
            }
    return text.size() - hold;
}

}  // namespace itera::server
