// What the command-line tools share: help and version print and exit 0, a usage error is one
// "error:" line and exit status 2, any other failure one "error:" line and exit status 1.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

namespace itera {

// A message as one printable line: control characters a user's value carried in (a newline in a
// path or an id list) are escaped, so an error is always exactly one line.
inline std::string one_line(std::string_view message) {
    std::string out;
    for (const char c : message) {
        const unsigned char u = static_cast<unsigned char>(c);
        if (c == '\n') {
            out += "\\n";
        } else if (c == '\t') {
            out += "\\t";
        } else if (u < 0x20 || u == 0x7f) {
            char hex[8];
            std::snprintf(hex, sizeof hex, "\\x%02x", u);
            out += hex;
        } else {
            out += c;
        }
    }
    return out;
}

// Returns the exit status when the program should stop now, nothing when it should go on.
inline std::optional<int> parse_command_line(CLI::App& app, int argc, char** argv, const char* program) {
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        std::fprintf(stderr, "error: %s (see %s --help)\n", one_line(e.what()).c_str(), program);
        return 2;
    }
    return std::nullopt;
}

// A usage error found after parsing (options that need each other): the same line and status 2.
inline int usage_error(const std::string& message, const char* program) {
    std::fprintf(stderr, "error: %s (see %s --help)\n", one_line(message).c_str(), program);
    return 2;
}

// A floating-point option in [min, max]. CLI::Range lets NaN through (every comparison with it is
// false); this refuses it, as a usage error like any other value out of range.
inline CLI::Validator number_in(double min, double max) {
    char range[64];
    std::snprintf(range, sizeof range, "in [%g, %g]", min, max);
    return CLI::Validator(
        [min, max, description = std::string(range)](std::string& text) -> std::string {
            char* end = nullptr;
            const double value = std::strtod(text.c_str(), &end);
            if (end == text.c_str() || *end != '\0' || !(value >= min && value <= max))
                return "must be a number " + description + ", got '" + text + "'";
            return "";
        },
        range);
}

// A path option given as "": an error, not the same as leaving the option out.
inline CLI::Validator non_empty() {
    return CLI::Validator([](std::string& text) -> std::string { return text.empty() ? "must not be empty" : ""; },
                          "PATH");
}

// Runs a tool's body, turning any exception that escapes it into its one-line error, and output
// that could not be written (a full disk, a closed pipe) into one too.
inline int run_reporting_errors(int (*body)(int, char**), int argc, char** argv) {
    int status = 0;
    try {
        status = body(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", one_line(e.what()).c_str());
        return 1;
    }
    if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
        std::fprintf(stderr, "error: cannot write to standard output\n");
        return 1;
    }
    return status;
}

}  // namespace itera
