// The command-line tools' shared parsing step: help and version print and exit 0, a usage error is
// one "error:" line and exit status 2.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdio>
#include <optional>

namespace itera {

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
        std::fprintf(stderr, "error: %s (see %s --help)\n", e.what(), program);
        return 2;
    }
    return std::nullopt;
}

}  // namespace itera
