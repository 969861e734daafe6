"""Stop strings as itera-server applies them (server/stop_strings.cpp), on UTF-8 bytes."""


def find_stop(text, start, stops):
    """Where the first stop string in text[start:] begins (searching from start), or -1."""
    found = [at for at in (text.find(s, start) for s in stops) if at >= 0]
    return min(found) if found else -1


def releasable(text, stops):
    """How much of text can be sent: all but the longest tail that could start a stop string."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text[len(text) - k:] == s[:k]:
                hold = k
                break
    return len(text) - hold
