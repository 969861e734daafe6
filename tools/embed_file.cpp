// Build helper: writes a C++ source defining a 4096-byte-aligned byte array with a file's contents,
// so the shipped model is linked into itera-run and loaded in place like an mmap'd file.
#include <cstdio>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: embed_file INPUT OUTPUT.cpp SYMBOL\n");
        return 2;
    }
    FILE* in = std::fopen(argv[1], "rb");
    if (!in) {
        std::fprintf(stderr, "error: cannot open %s\n", argv[1]);
        return 1;
    }
    std::vector<unsigned char> bytes;
    unsigned char buf[65536];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, in)) > 0;) bytes.insert(bytes.end(), buf, buf + n);
    std::fclose(in);
    FILE* out = std::fopen(argv[2], "w");
    if (!out) {
        std::fprintf(stderr, "error: cannot write %s\n", argv[2]);
        return 1;
    }
    std::fprintf(out, "#include <cstddef>\nextern \"C\" {\nalignas(4096) extern const unsigned char %s[] = {", argv[3]);
    for (size_t i = 0; i < bytes.size(); i++) {
        if (i) std::fputc(',', out);
        if (i % 32 == 0) std::fputc('\n', out);
        std::fprintf(out, "%u", bytes[i]);
    }
    std::fprintf(out, "};\nextern const size_t %s_size = %zu;\n}\n", argv[3], bytes.size());
    return std::fclose(out) == 0 ? 0 : 1;
}
