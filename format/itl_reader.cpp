// Loads an .itl file: maps it, checks every byte range and field before anything is used, and
// exposes the tensors in place (docs/format.md).
#include <sys/mman.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <set>
#include <string_view>

#include "common/error.h"
#include "common/file_io.h"
#include "format/itl_file.h"
#include "format/itl_layout.h"
#include "itera_generated.h"

namespace itera {

static_assert(std::endian::native == std::endian::little, "tensor bytes are used in place in host order");

int64_t TensorView::elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
}

std::unique_ptr<ItlFile> ItlFile::open(const std::string& path, LoadOptions options) {
    const auto [fd, size] = open_regular_file(path);
    std::unique_ptr<ItlFile> file(new ItlFile());
    file->size_ = static_cast<size_t>(size);
    if (file->size_ > 0) {  // an empty file cannot be mapped; parse() rejects it
        void* p = mmap(nullptr, file->size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            const int err = errno;
            close(fd);
            throw Error("cannot map '" + path + "': " + std::strerror(err));
        }
        file->mapping_ = p;
        file->base_ = static_cast<const uint8_t*>(p);
    }
    close(fd);  // the mapping keeps the file alive
    file->parse(options);
    return file;
}

std::unique_ptr<ItlFile> ItlFile::from_memory(const void* data, size_t size, LoadOptions options) {
    std::unique_ptr<ItlFile> file(new ItlFile());
    file->size_ = size;
    if (reinterpret_cast<uintptr_t>(data) % kItlTensorAlign == 0) {
        file->base_ = static_cast<const uint8_t*>(data);
    } else {  // tensors must be 64-aligned in memory: copy into an aligned spot of an owned buffer
        file->owned_.resize(size + kItlTensorAlign - 1);
        const uintptr_t start = reinterpret_cast<uintptr_t>(file->owned_.data());
        uint8_t* aligned = file->owned_.data() + (align_up(start, kItlTensorAlign) - start);
        if (size > 0) std::memcpy(aligned, data, size);
        file->base_ = aligned;
    }
    file->parse(options);
    return file;
}

ItlFile::~ItlFile() {
    if (mapping_) munmap(mapping_, size_);
}

const TensorView* ItlFile::find(const std::string& name) const {
    for (const TensorView& t : tensors_)
        if (t.name == name) return &t;
    return nullptr;
}

namespace {

std::string str(const flatbuffers::String* s) { return s ? s->str() : std::string(); }

// A byte range of the data region named by the metadata: 64-aligned and inside the region.
void check_range(const std::string& what, uint64_t offset, uint64_t length, uint64_t data_length) {
    if (offset % kItlTensorAlign != 0)
        throw Error(what + ": offset " + std::to_string(offset) + " is not a multiple of 64");
    if (offset > data_length || length > data_length - offset)
        throw Error(what + ": bytes at offset " + std::to_string(offset) + " (length " + std::to_string(length) +
                    ") lie outside the data region (" + std::to_string(data_length) + " bytes)");
}

ModelConfig read_config(const fb::ModelConfig& c) {
    ModelConfig config;
    config.vocab_size = c.vocab_size();
    config.hidden = c.hidden();
    config.max_seq_length = c.max_seq_length();
    config.tied_head = c.tied_head();
    config.norm_eps = c.norm_eps();
    if (c.vocab_ids()) config.vocab_ids.assign(c.vocab_ids()->begin(), c.vocab_ids()->end());
    if (c.layers()) {
        for (const fb::LayerConfig* l : *c.layers()) {
            LayerConfig layer;
            layer.inner = l->inner();
            layer.state = l->state();
            layer.conv_kernel = l->conv_kernel();
            layer.kind = static_cast<ChannelKind>(l->kind());  // validate_config rejects unknown values
            layer.top_k = l->top_k();
            if (l->ffn_widths()) layer.ffn_widths.assign(l->ffn_widths()->begin(), l->ffn_widths()->end());
            config.layers.push_back(std::move(layer));
        }
    }
    validate_config(config);
    return config;
}

// The most bytes the blocks of the zstd frame in [src, src + size) decompress to (RFC 8878
// 3.1.1): a raw or RLE block gives its Block_Size, a compressed block at most 128 KiB (the
// largest Block_Size the format allows for any of them). A frame
// header's content size is only a claim; checked against this bound before allocating for it,
// nothing is allocated that the file's bytes do not back. 0 for a truncated or malformed frame.
uint64_t zstd_blocks_bound(const uint8_t* src, size_t size) {
    constexpr uint32_t kMaxBlock = 128 * 1024;
    if (size < 5) return 0;
    const unsigned fhd = src[4], fcs_flag = fhd >> 6, single_segment = fhd >> 5 & 1, dict_flag = fhd & 3;
    size_t pos =
        5 + !single_segment + (dict_flag == 3 ? 4 : dict_flag) + (fcs_flag == 0 ? single_segment : 1u << fcs_flag);
    uint64_t bound = 0;
    while (pos <= size && size - pos >= 3) {
        const uint32_t h = src[pos] | uint32_t{src[pos + 1]} << 8 | uint32_t{src[pos + 2]} << 16;
        const uint32_t type = h >> 1 & 3, block_size = h >> 3;
        const size_t stored = type == 1 ? 1 : block_size;  // RLE: one byte, repeated
        pos += 3;
        if (type == 3 || block_size > kMaxBlock || stored > size - pos) return 0;  // reserved type, too big, truncated
        pos += stored;
        bound += type == 2 ? kMaxBlock : block_size;
        if (h & 1) return bound;  // Last_Block
    }
    return 0;
}

// Whether [src, src + size) is exactly one zstd frame: ZSTD_decompress would also take frames
// after it (a skippable one decodes to nothing), bytes that no declared size accounts for.
bool one_zstd_frame(const uint8_t* src, size_t size) { return ZSTD_findFrameCompressedSize(src, size) == size; }

// Checked before the tokens are built, so a section of empty tokens cannot make a huge vector.
void check_token_count(uint64_t count, int32_t id_limit) {
    if (count > static_cast<uint64_t>(id_limit))
        throw Error("tokenizer: " + std::to_string(count) + " tokens, more than the model's " +
                    std::to_string(id_limit) + " token ids");
}

// Decompresses (at most raw_length bytes) and verifies the token list.
TokenizerSpec read_tokenizer(const fb::Tokenizer& t, const uint8_t* data, uint64_t data_length, int32_t id_limit,
                             uint32_t format_version) {
    TokenizerSpec tokenizer;
    const int32_t kind = static_cast<int32_t>(t.kind());
    if (kind != static_cast<int32_t>(TokenizerKind::word) && kind != static_cast<int32_t>(TokenizerKind::chars))
        throw Error("tokenizer: unknown kind " + std::to_string(kind));
    tokenizer.kind = static_cast<TokenizerKind>(kind);

    const fb::Section& s = *t.tokens();
    check_range("tokenizer", s.offset(), s.length(), data_length);
    const uint64_t raw_length = s.raw_length();
    if (raw_length > kItlMaxTokenizerBytes)
        throw Error("tokenizer: raw_length " + std::to_string(raw_length) + " exceeds the 64 MiB limit");
    const uint8_t* stored = data + s.offset();
    std::vector<uint8_t> decompressed;
    const uint8_t* raw = stored;
    if (s.compression() == fb::Compression::none) {
        if (s.length() != raw_length)
            throw Error("tokenizer: uncompressed section of " + std::to_string(s.length()) +
                        " bytes, raw_length says " + std::to_string(raw_length));
    } else if (s.compression() == fb::Compression::zstd) {
        const unsigned long long declared = ZSTD_getFrameContentSize(stored, s.length());
        if (declared == ZSTD_CONTENTSIZE_ERROR || declared == ZSTD_CONTENTSIZE_UNKNOWN)
            throw Error("tokenizer: not a zstd frame with a declared size");
        if (declared != raw_length)
            throw Error("tokenizer: zstd frame declares " + std::to_string(declared) + " bytes, raw_length says " +
                        std::to_string(raw_length));
        if (raw_length > zstd_blocks_bound(stored, s.length()))
            throw Error("tokenizer: zstd frame declares " + std::to_string(raw_length) +
                        " bytes, more than its blocks hold");
        if (!one_zstd_frame(stored, s.length())) throw Error("tokenizer: bytes after its zstd frame");
        decompressed.resize(raw_length);
        const size_t n = ZSTD_decompress(decompressed.data(), decompressed.size(), stored, s.length());
        if (ZSTD_isError(n)) throw Error(std::string("tokenizer: zstd decompression failed: ") + ZSTD_getErrorName(n));
        if (n != raw_length)
            throw Error("tokenizer: decompressed " + std::to_string(n) + " bytes, raw_length says " +
                        std::to_string(raw_length));
        raw = decompressed.data();
    } else {
        throw Error("tokenizer: unknown compression " + std::to_string(static_cast<int32_t>(s.compression())));
    }

    if (t.encoding() == fb::TokenListEncoding::lines) {
        if (format_version < 2) throw Error("tokenizer: newline-joined tokens in a format version 1 file");
        if (raw_length > 0 && raw[raw_length - 1] != '\n') throw Error("tokenizer: last token not ended by a newline");
        const uint64_t count = static_cast<uint64_t>(std::count(raw, raw + raw_length, uint8_t{'\n'}));
        check_token_count(count, id_limit);
        tokenizer.tokens.reserve(count);
        for (const uint8_t* p = raw; p < raw + raw_length;) {
            const uint8_t* end = std::find(p, raw + raw_length, uint8_t{'\n'});
            tokenizer.tokens.emplace_back(reinterpret_cast<const char*>(p), static_cast<size_t>(end - p));
            p = end + 1;
        }
        return tokenizer;
    }
    if (t.encoding() != fb::TokenListEncoding::flatbuffer)
        throw Error("tokenizer: unknown encoding " + std::to_string(static_cast<int32_t>(t.encoding())));
    flatbuffers::Verifier verifier(raw, raw_length);
    if (!verifier.VerifyBuffer<fb::TokenList>(nullptr))
        throw Error("tokenizer: corrupt token list (FlatBuffers verification failed)");
    const fb::TokenList* list = flatbuffers::GetRoot<fb::TokenList>(raw);
    if (list->tokens()) {
        check_token_count(list->tokens()->size(), id_limit);
        for (const flatbuffers::String* token : *list->tokens()) tokenizer.tokens.push_back(token->str());
    }
    return tokenizer;
}

}  // namespace

// Checks in the order that gives the most useful message: header, checksum, metadata structure,
// then every field the runtime will trust.
void ItlFile::parse(LoadOptions options) {
    if (size_ < kItlHeaderBytes)
        throw Error("truncated file: " + std::to_string(size_) + " bytes, smaller than the 64-byte .itl header");
    if (std::memcmp(base_, kItlMagic, sizeof kItlMagic) != 0) throw Error("not an .itl file (bad magic)");
    const ItlHeader h = load_itl_header(base_);
    if (h.format_version < kItlOldestFormatVersion || h.format_version > kItlFormatVersion)
        throw Error("unsupported .itl format version " + std::to_string(h.format_version) +
                    " (this reader supports versions " + std::to_string(kItlOldestFormatVersion) + " to " +
                    std::to_string(kItlFormatVersion) + ")");
    format_version_ = h.format_version;
    checksum_ = h.checksum;
    if (h.header_bytes != kItlHeaderBytes || h.meta_offset != h.header_bytes)
        throw Error("corrupt header: header_bytes " + std::to_string(h.header_bytes) + ", meta_offset " +
                    std::to_string(h.meta_offset) + " (both must be 64)");
    const bool meta_zstd = h.flags == kItlFlagMetaZstd;
    if (h.flags != 0 && !meta_zstd) throw Error("corrupt header: unknown flags " + std::to_string(h.flags));
    if (!meta_zstd && h.reserved != 0)
        throw Error("corrupt header: reserved " + std::to_string(h.reserved) + " without compressed metadata");
    if (h.meta_length == 0 || h.meta_length > kItlMaxMetaBytes)
        throw Error("corrupt header: meta_length " + std::to_string(h.meta_length));
    if (meta_zstd && (h.reserved == 0 || h.reserved > kItlMaxMetaBytes))
        throw Error("corrupt header: metadata raw length (reserved) " + std::to_string(h.reserved));
    const uint64_t data_align = h.data_length < kItlSmallData ? kItlTensorAlign : kItlDataAlign;
    if (h.data_offset % data_align != 0 || h.data_offset < h.meta_offset + h.meta_length)
        throw Error("corrupt header: data_offset " + std::to_string(h.data_offset));
    if (h.data_offset > size_ || h.data_length != size_ - h.data_offset)
        throw Error("truncated or corrupt file: " + std::to_string(size_) + " bytes, the header places " +
                    std::to_string(h.data_length) + " data bytes at offset " + std::to_string(h.data_offset));
    const uint8_t* meta = base_ + h.meta_offset;
    const uint8_t* data = base_ + h.data_offset;
    if (options.verify_checksum && itl_checksum(meta, h.meta_length, data, h.data_length) != h.checksum)
        throw Error("checksum mismatch: file is corrupt");
    uint64_t meta_length = h.meta_length;
    if (meta_zstd) {  // decompressed once into an owned, 8-byte aligned buffer
        const unsigned long long declared = ZSTD_getFrameContentSize(meta, h.meta_length);
        if (declared != h.reserved)
            throw Error("corrupt metadata: compressed frame declares " + std::to_string(declared) +
                        " bytes, the header " + std::to_string(h.reserved));
        if (h.reserved > zstd_blocks_bound(meta, h.meta_length))
            throw Error("corrupt metadata: compressed frame declares " + std::to_string(h.reserved) +
                        " bytes, more than its blocks hold");
        if (!one_zstd_frame(meta, h.meta_length)) throw Error("corrupt metadata: bytes after its zstd frame");
        meta_.resize((h.reserved + 7) / 8);
        const size_t n = ZSTD_decompress(meta_.data(), h.reserved, meta, h.meta_length);
        if (ZSTD_isError(n) || n != h.reserved) throw Error("corrupt metadata: zstd decompression failed");
        meta = reinterpret_cast<const uint8_t*>(meta_.data());
        meta_length = h.reserved;
    }

    flatbuffers::Verifier verifier(meta, meta_length);
    if (!fb::VerifyModelBuffer(verifier)) throw Error("corrupt metadata: FlatBuffers verification failed");
    const fb::Model* model = fb::GetModel(meta);
    if (model->format_version() != h.format_version)
        throw Error("corrupt metadata: format_version " + std::to_string(model->format_version()) +
                    " differs from the header's " + std::to_string(h.format_version));
    if (model->quant_version() > kQuantVersion)
        throw Error("unsupported quantization format version " + std::to_string(model->quant_version()) +
                    " (this reader supports up to " + std::to_string(kQuantVersion) + ")");
    config_ = read_config(*model->config());

    // Names are checked for duplicates as they come: a tensors vector of millions of offsets to
    // one table is refused at its second entry, not after a view of each.
    std::set<std::string_view> names;  // views into the metadata
    if (model->tensors()) {
        for (const fb::Tensor* t : *model->tensors()) {
            TensorView view;
            view.name = t->name()->str();
            if (!names.insert(t->name()->string_view()).second)
                throw Error("duplicate tensor name '" + view.name + "'");
            const std::string what = "tensor '" + view.name + "'";
            const int32_t dtype = static_cast<int32_t>(t->dtype());
            if (!dtype_known(dtype))
                throw Error(what + ": unsupported dtype " + std::to_string(dtype) +
                            " (this reader knows 0 fp32, 1 fp16, 2 q8, 3 q4, 4 nf4, 5 q3, 6 q2)");
            view.dtype = static_cast<DType>(dtype);
            const int32_t layout = static_cast<int32_t>(t->layout());
            if (layout != static_cast<int32_t>(Layout::row_major) && layout != static_cast<int32_t>(Layout::rows16))
                throw Error(what + ": unsupported layout " + std::to_string(layout) +
                            " (this reader knows 0 row_major, 1 rows16)");
            view.layout = static_cast<Layout>(layout);
            const size_t rank = t->shape() ? t->shape()->size() : 0;
            if (rank > kItlMaxRank) throw Error(what + ": rank " + std::to_string(rank) + " (at most 4)");
            // The FlatBuffers 2.0.8 verifier checks a vector's length field but not that 8-byte
            // elements are 8-aligned (its builder always aligns them); reading them misaligned is UB.
            if (rank > 0 && reinterpret_cast<uintptr_t>(t->shape()->data()) % alignof(int64_t) != 0)
                throw Error(what + ": corrupt metadata (shape not 8-byte aligned)");
            for (size_t i = 0; i < rank; i++)
                view.shape.push_back(t->shape()->Get(static_cast<flatbuffers::uoffset_t>(i)));
            const int64_t n = checked_elements(what, view.shape.data(), rank);
            if (const std::string why = layout_refusal(view.layout, view.dtype, view.shape); !why.empty())
                throw Error(what + ": " + why);
            check_range(what, t->offset(), t->length(), h.data_length);
            (void)n;  // bounds the dimensions before tensor_bytes multiplies them
            const size_t expected = tensor_bytes(view.dtype, view.shape);
            if (t->length() != expected)
                throw Error(what + ": " + std::to_string(t->length()) + " bytes, its shape and dtype need " +
                            std::to_string(expected));
            view.data = data + t->offset();
            view.bytes = expected;
            tensors_.push_back(std::move(view));
        }
    }

    if (model->tokenizer()) {
        // token ids run to the last vocab_id when rows were dropped
        tokenizer_ = read_tokenizer(*model->tokenizer(), data, h.data_length,
                                    config_.vocab_ids.empty() ? config_.vocab_size : config_.vocab_ids.back() + 1,
                                    h.format_version);
        has_tokenizer_ = true;
    }
    if (const fb::Provenance* p = model->provenance()) {
        provenance_.source_name = str(p->source_name());
        provenance_.source_sha256 = str(p->source_sha256());
        provenance_.converter_version = str(p->converter_version());
        provenance_.options = str(p->options());
    }
}

}  // namespace itera
