#include "converter/pt/pickle_machine.h"

#include <bit>
#include <charconv>
#include <string_view>
#include <unordered_map>

#include "common/error.h"

namespace itera::pt {

const char* type_name(Obj::Type type) {
    switch (type) {
        case Obj::Type::none:
            return "None";
        case Obj::Type::boolean:
            return "bool";
        case Obj::Type::integer:
            return "int";
        case Obj::Type::real:
            return "float";
        case Obj::Type::string:
            return "str";
        case Obj::Type::bytes:
            return "bytes";
        case Obj::Type::tuple:
            return "tuple";
        case Obj::Type::list:
            return "list";
        case Obj::Type::dict:
            return "dict";
        case Obj::Type::global:
            return "global";
        case Obj::Type::object:
            return "object";
        case Obj::Type::storage:
            return "storage";
        case Obj::Type::tensor:
            return "tensor";
    }
    return "?";
}

namespace {

// Storage classes that may appear in a persistent id, and the element type they carry.
struct StorageType {
    const char* global;
    const char* dtype;
};
constexpr StorageType kStorageTypes[] = {
    {"torch.FloatStorage", "f32"},  {"torch.HalfStorage", "f16"},    {"torch.BFloat16Storage", "bf16"},
    {"torch.DoubleStorage", "f64"}, {"torch.LongStorage", "i64"},    {"torch.IntStorage", "i32"},
    {"torch.ShortStorage", "i16"},  {"torch.CharStorage", "i8"},     {"torch.ByteStorage", "u8"},
    {"torch.BoolStorage", "bool"},  {"torch.QInt8Storage", "qint8"},
};

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out += char(cp);
    } else if (cp < 0x800) {
        out += char(0xc0 | cp >> 6);
        out += char(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        out += char(0xe0 | cp >> 12);
        out += char(0x80 | (cp >> 6 & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    } else {
        out += char(0xf0 | cp >> 18);
        out += char(0x80 | (cp >> 12 & 0x3f));
        out += char(0x80 | (cp >> 6 & 0x3f));
        out += char(0x80 | (cp & 0x3f));
    }
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

class Machine {
public:
    Machine(const uint8_t* data, size_t size) : data_(data), size_(size) {}

    Pickle run() {
        while (true) {
            const size_t at = pos_;
            const uint8_t op = take(1)[0];
            if (step(op, at)) break;
        }
        return std::move(out_);
    }

private:
    const uint8_t* data_;
    size_t size_;
    size_t pos_ = 0;
    Pickle out_;
    std::vector<Obj*> stack_;
    std::vector<size_t> marks_;  // stack heights at each MARK
    std::unordered_map<uint64_t, Obj*> memo_;
    Obj* none_ = make(Obj::Type::none);  // shared: immutable
    Obj* true_ = make_bool(true);
    Obj* false_ = make_bool(false);

    Error fail(const std::string& what, size_t at) const {
        return Error("corrupt pickle: " + what + " at offset " + std::to_string(at));
    }

    const uint8_t* take(size_t n) {
        if (n > size_ - pos_)
            throw Error("truncated pickle: " + std::to_string(n) + " bytes needed at offset " + std::to_string(pos_) +
                        " of " + std::to_string(size_));
        const uint8_t* p = data_ + pos_;
        pos_ += n;
        return p;
    }
    uint64_t uint_le(size_t n) {
        const uint8_t* p = take(n);
        uint64_t v = 0;
        for (size_t k = 0; k < n; ++k) v |= uint64_t(p[k]) << (8 * k);
        return v;
    }
    size_t length(size_t n) {  // a length field, which must fit in what is left
        const uint64_t v = uint_le(n);
        if (v > size_ - pos_)
            throw Error("truncated pickle: " + std::to_string(v) + "-byte string at offset " + std::to_string(pos_) +
                        " of " + std::to_string(size_));
        return size_t(v);
    }
    std::string_view line() {  // text argument of a protocol-0 opcode, without its newline
        size_t end = pos_;
        while (end < size_ && data_[end] != '\n') ++end;
        if (end == size_) throw Error("truncated pickle: unterminated text argument at offset " + std::to_string(pos_));
        std::string_view s(reinterpret_cast<const char*>(data_ + pos_), end - pos_);
        pos_ = end + 1;
        return s;
    }
    int64_t parse_int(std::string_view s, size_t at) const {
        if (!s.empty() && s[0] == '+') s.remove_prefix(1);
        int64_t v = 0;
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
        if (ec != std::errc() || p != s.data() + s.size())
            throw fail("bad or too large integer '" + std::string(s.substr(0, 40)) + "'", at);
        return v;
    }

    Obj* make(Obj::Type type) {
        Obj& o = out_.arena.emplace_back();
        o.type = type;
        return &o;
    }
    Obj* make_bool(bool v) {
        Obj* o = make(Obj::Type::boolean);
        o->b = v;
        return o;
    }
    Obj* make_int(int64_t v) {
        Obj* o = make(Obj::Type::integer);
        o->i = v;
        return o;
    }
    Obj* make_str(Obj::Type type, std::string s) {
        Obj* o = make(type);
        o->s = std::move(s);
        return o;
    }
    Obj* make_str(Obj::Type type, size_t n) {
        const char* p = reinterpret_cast<const char*>(take(n));
        return make_str(type, std::string(p, n));
    }

    // Python's unpickler keeps the items above the last MARK apart: nothing may pop below it.
    size_t floor() const { return marks_.empty() ? 0 : marks_.back(); }
    Obj* pop(size_t at) {
        if (stack_.size() <= floor()) throw fail("stack underflow", at);
        Obj* o = stack_.back();
        stack_.pop_back();
        return o;
    }
    Obj* top(size_t at) {
        if (stack_.size() <= floor()) throw fail("stack underflow", at);
        return stack_.back();
    }
    Obj* top(Obj::Type type, const char* op, size_t at) {
        Obj* o = top(at);
        if (o->type != type) throw fail(std::string(op) + " on a " + type_name(o->type), at);
        return o;
    }
    std::vector<Obj*> pop_mark(size_t at) {
        if (marks_.empty()) throw fail("no MARK to pop to", at);
        std::vector<Obj*> items(stack_.begin() + ptrdiff_t(marks_.back()), stack_.end());
        stack_.resize(marks_.back());
        marks_.pop_back();
        return items;
    }
    Obj* collection(Obj::Type type, std::vector<Obj*> items) {
        Obj* o = make(type);
        o->items = std::move(items);
        return o;
    }
    void add_pairs(Obj* dict, const std::vector<Obj*>& items, size_t at) {
        if (items.size() % 2) throw fail("odd number of items for a dict", at);
        for (size_t k = 0; k < items.size(); k += 2) dict->entries.emplace_back(items[k], items[k + 1]);
    }
    Obj* memo_get(uint64_t key, size_t at) {
        auto it = memo_.find(key);
        if (it == memo_.end()) throw fail("memo entry " + std::to_string(key) + " missing", at);
        return it->second;
    }

    // A STRING argument: a Python bytes literal in quotes, with backslash escapes.
    std::string unquote(std::string_view s, size_t at) const {
        if (s.size() < 2 || s.front() != s.back() || (s.front() != '\'' && s.front() != '"'))
            throw fail("STRING argument not quoted", at);
        s = s.substr(1, s.size() - 2);
        std::string out;
        for (size_t k = 0; k < s.size(); ++k) {
            if (s[k] != '\\') {
                out += s[k];
                continue;
            }
            if (++k == s.size()) throw fail("STRING argument ends in a backslash", at);
            const char c = s[k];
            switch (c) {
                case 'n':
                    out += '\n';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 'a':
                    out += '\a';
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'v':
                    out += '\v';
                    break;
                case '\\':
                case '\'':
                case '"':
                    out += c;
                    break;
                case 'x': {
                    if (s.size() - k < 3) throw fail("bad \\x escape in STRING", at);
                    const int hi = hex_digit(s[k + 1]), lo = hex_digit(s[k + 2]);
                    if (hi < 0 || lo < 0) throw fail("bad \\x escape in STRING", at);
                    out += char(hi * 16 + lo);
                    k += 2;
                    break;
                }
                default:
                    if (c >= '0' && c <= '7') {
                        int v = c - '0';
                        for (int n = 0; n < 2 && k + 1 < s.size() && s[k + 1] >= '0' && s[k + 1] <= '7'; ++n)
                            v = v * 8 + (s[++k] - '0');
                        out += char(v & 0xff);
                    } else {
                        out += '\\';
                        out += c;
                    }
            }
        }
        return out;
    }

    // A UNICODE argument: raw-unicode-escape (latin-1 bytes; \uXXXX and \UXXXXXXXX escapes
    // only after an odd number of backslashes), returned as UTF-8.
    std::string raw_unicode(std::string_view s, size_t at) const {
        std::string out;
        for (size_t k = 0; k < s.size();) {
            if (s[k] != '\\') {
                append_utf8(out, uint8_t(s[k++]));
                continue;
            }
            size_t run = 0;
            while (k < s.size() && s[k] == '\\') ++run, ++k;
            const bool escape = run % 2 == 1 && k < s.size() && (s[k] == 'u' || s[k] == 'U');
            out.append(run - escape, '\\');
            if (!escape) continue;
            const size_t digits = s[k] == 'u' ? 4 : 8;
            if (s.size() - k - 1 < digits) throw fail("truncated \\u escape in UNICODE", at);
            uint32_t cp = 0;
            for (size_t d = 1; d <= digits; ++d) {
                const int h = hex_digit(s[k + d]);
                if (h < 0) throw fail("bad \\u escape in UNICODE", at);
                cp = cp * 16 + uint32_t(h);
            }
            if (cp > 0x10ffff) throw fail("code point beyond U+10FFFF in UNICODE", at);
            append_utf8(out, cp);
            k += 1 + digits;
        }
        return out;
    }

    Obj* global(std::string module, const std::string& name) {
        return make_str(Obj::Type::global, std::move(module) + "." + name);
    }

    // BINPERSID / PERSID: torch.save refers to storages as ('storage', torch.<T>Storage, key, location, numel).
    Obj* persistent_load(const Obj* pid, size_t at) {
        const auto& it = pid->items;
        if (pid->type != Obj::Type::tuple || it.size() != 5 || it[0]->type != Obj::Type::string ||
            it[0]->s != "storage")
            throw fail("unsupported persistent id (expected a torch storage reference)", at);
        if (it[1]->type != Obj::Type::global || it[2]->type != Obj::Type::string || it[3]->type != Obj::Type::string ||
            it[4]->type != Obj::Type::integer || it[4]->i < 0)
            throw fail("malformed storage reference", at);
        for (const StorageType& st : kStorageTypes) {
            if (it[1]->s != st.global) continue;
            Obj* o = make_str(Obj::Type::storage, it[2]->s);
            o->dtype = st.dtype;
            o->numel = it[4]->i;
            return o;
        }
        throw Error("unsupported storage type '" + it[1]->s + "'");
    }

    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    // _rebuild_qtensor(storage, offset, size, stride, (qscheme, scale, zero_point), requires_grad, backward_hooks)
    Obj* rebuild_tensor(const std::string& fn, const Obj* args, bool quantized) {
        const auto& a = args->items;
        auto bad = [&] { return Error("malformed arguments to " + fn); };
        if (a.size() < (quantized ? 5u : 4u) || a[0]->type != Obj::Type::storage || a[1]->type != Obj::Type::integer ||
            a[2]->type != Obj::Type::tuple || a[3]->type != Obj::Type::tuple)
            throw bad();
        Obj* t = make(Obj::Type::tensor);
        t->storage = a[0];
        t->offset = a[1]->i;
        for (const Obj* d : a[2]->items) {
            if (d->type != Obj::Type::integer) throw bad();
            t->shape.push_back(d->i);
        }
        for (const Obj* d : a[3]->items) {
            if (d->type != Obj::Type::integer) throw bad();
            t->stride.push_back(d->i);
        }
        if ((a[0]->dtype == "qint8") != quantized)
            throw Error(fn + " on a " + a[0]->dtype + " storage is not supported");
        if (quantized) {
            const Obj* q = a[4];
            if (q->type != Obj::Type::tuple || q->items.empty() || q->items[0]->type != Obj::Type::global) throw bad();
            if (q->items[0]->s != "torch.per_tensor_affine")
                throw Error("unsupported quantization scheme '" + q->items[0]->s + "' (only per_tensor_affine)");
            if (q->items.size() != 3 || q->items[2]->type != Obj::Type::integer ||
                (q->items[1]->type != Obj::Type::real && q->items[1]->type != Obj::Type::integer))
                throw bad();
            t->quantized = true;
            t->scale = q->items[1]->type == Obj::Type::real ? q->items[1]->f : double(q->items[1]->i);
            t->zero_point = q->items[2]->i;
            if (t->zero_point < -128 || t->zero_point > 127)
                throw Error("qint8 zero_point " + std::to_string(t->zero_point) + " out of range");
        }
        return t;
    }

    // REDUCE: the allowlisted callables, interpreted as data constructors.
    Obj* call(const Obj* fn, const Obj* args, size_t at) {
        if (fn->type != Obj::Type::global) throw fail(std::string("REDUCE on a ") + type_name(fn->type), at);
        if (args->type != Obj::Type::tuple) throw fail("REDUCE arguments are not a tuple", at);
        const std::string& name = fn->s;
        if (name == "collections.OrderedDict") {
            if (!args->items.empty()) throw Error("collections.OrderedDict with arguments is not supported");
            return make(Obj::Type::dict);
        }
        if (name == "torch._utils._rebuild_tensor_v2") return rebuild_tensor(name, args, false);
        if (name == "torch._utils._rebuild_qtensor") return rebuild_tensor(name, args, true);
        if (name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") {
            if (args->items.empty() || args->items[0]->type != Obj::Type::tensor)
                throw Error("malformed arguments to " + name);
            return args->items[0];
        }
        throw Error("unsupported pickle global '" + name + "' (itera-convert never executes pickle code)");
    }

    // NEWOBJ: cls.__new__(cls, *args) of a class we do not know makes an inert object whose
    // BUILD state is kept as data.
    Obj* new_object(const Obj* cls, const Obj* args, size_t at) {
        if (cls->type != Obj::Type::global) throw fail(std::string("NEWOBJ on a ") + type_name(cls->type), at);
        if (args->type != Obj::Type::tuple) throw fail("NEWOBJ arguments are not a tuple", at);
        if (cls->s == "collections.OrderedDict") return make(Obj::Type::dict);
        return make_str(Obj::Type::object, cls->s);
    }

    void build(size_t at) {
        Obj* state = pop(at);
        Obj* target = top(at);
        if (target->type == Obj::Type::dict) return;  // OrderedDict's `_metadata`: not needed
        if (target->type != Obj::Type::object) throw fail(std::string("BUILD on a ") + type_name(target->type), at);
        if (state->type != Obj::Type::dict)
            throw Error("unsupported state for '" + target->s + "': a " + type_name(state->type) + ", expected a dict");
        target->state = state;
    }

    // Executes one opcode; returns true at STOP.
    bool step(uint8_t op, size_t at) {
        using T = Obj::Type;
        // One opcode per line, as the table it is.
        // clang-format off
        switch (op) {
            case 0x80: {  // PROTO
                const uint8_t v = take(1)[0];
                if (v > 5) throw fail("unsupported pickle protocol " + std::to_string(v), at);
                break;
            }
            case 0x95: length(8); break;  // FRAME: only a hint for buffered readers
            case '.':                     // STOP
                out_.root = pop(at);
                return true;
            case '(': marks_.push_back(stack_.size()); break;  // MARK
            case '0':                                          // POP
                if (stack_.size() > floor()) stack_.pop_back();
                else pop_mark(at);
                break;
            case '1': pop_mark(at); break;               // POP_MARK
            case '2': stack_.push_back(top(at)); break;  // DUP

            case 'N': stack_.push_back(none_); break;
            case 0x88: stack_.push_back(true_); break;   // NEWTRUE
            case 0x89: stack_.push_back(false_); break;  // NEWFALSE
            case 'I': {                                  // INT (text; "01"/"00" are True/False)
                const std::string_view s = line();
                if (s == "01" || s == "00") stack_.push_back(s == "01" ? true_ : false_);
                else stack_.push_back(make_int(parse_int(s, at)));
                break;
            }
            case 'J': stack_.push_back(make_int(int32_t(uint32_t(uint_le(4))))); break;  // BININT
            case 'K': stack_.push_back(make_int(int64_t(uint_le(1)))); break;           // BININT1
            case 'M': stack_.push_back(make_int(int64_t(uint_le(2)))); break;           // BININT2
            case 'L': {                                                                   // LONG (text)
                std::string_view s = line();
                if (!s.empty() && s.back() == 'L') s.remove_suffix(1);
                stack_.push_back(make_int(parse_int(s, at)));
                break;
            }
            case 0x8a: case 0x8b: {  // LONG1, LONG4: little-endian two's complement
                const size_t n = length(op == 0x8a ? 1 : 4);
                if (n > 8) throw fail("integer wider than 64 bits", at);
                uint64_t v = uint_le(n);
                if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~uint64_t(0) << (8 * n);
                stack_.push_back(make_int(int64_t(v)));
                break;
            }
            case 'F': {  // FLOAT (text)
                const std::string_view s = line();
                Obj* o = make(T::real);
                auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), o->f);
                if (ec != std::errc() || p != s.data() + s.size()) throw fail("bad float '" + std::string(s.substr(0, 40)) + "'", at);
                stack_.push_back(o);
                break;
            }
            case 'G': {  // BINFLOAT: big-endian double
                const uint8_t* p = take(8);
                uint64_t bits = 0;
                for (int k = 0; k < 8; ++k) bits = bits << 8 | p[k];
                Obj* o = make(T::real);
                o->f = std::bit_cast<double>(bits);
                stack_.push_back(o);
                break;
            }

            case 'S': stack_.push_back(make_str(T::bytes, unquote(line(), at))); break;        // STRING
            case 'T': stack_.push_back(make_str(T::bytes, length(4))); break;                  // BINSTRING
            case 'U': stack_.push_back(make_str(T::bytes, length(1))); break;                  // SHORT_BINSTRING
            case 'C': stack_.push_back(make_str(T::bytes, length(1))); break;                  // SHORT_BINBYTES
            case 'B': stack_.push_back(make_str(T::bytes, length(4))); break;                  // BINBYTES
            case 0x8e: stack_.push_back(make_str(T::bytes, length(8))); break;                 // BINBYTES8
            case 0x96: stack_.push_back(make_str(T::bytes, length(8))); break;                 // BYTEARRAY8
            case 'V': stack_.push_back(make_str(T::string, raw_unicode(line(), at))); break;   // UNICODE
            case 0x8c: stack_.push_back(make_str(T::string, length(1))); break;                // SHORT_BINUNICODE
            case 'X': stack_.push_back(make_str(T::string, length(4))); break;                 // BINUNICODE
            case 0x8d: stack_.push_back(make_str(T::string, length(8))); break;                // BINUNICODE8

            case ')': stack_.push_back(make(T::tuple)); break;                       // EMPTY_TUPLE
            case 't': stack_.push_back(collection(T::tuple, pop_mark(at))); break;   // TUPLE
            case 0x85: case 0x86: case 0x87: {                                       // TUPLE1..3
                std::vector<Obj*> items(size_t(op - 0x84));
                for (size_t k = items.size(); k-- > 0;) items[k] = pop(at);
                stack_.push_back(collection(T::tuple, std::move(items)));
                break;
            }
            case ']': stack_.push_back(make(T::list)); break;                       // EMPTY_LIST
            case 'l': stack_.push_back(collection(T::list, pop_mark(at))); break;   // LIST
            case 'a': {                                                             // APPEND
                Obj* v = pop(at);
                top(T::list, "APPEND", at)->items.push_back(v);
                break;
            }
            case 'e': case 0x90: {  // APPENDS, ADDITEMS (sets are kept as lists)
                const std::vector<Obj*> items = pop_mark(at);
                Obj* list = top(T::list, op == 'e' ? "APPENDS" : "ADDITEMS", at);
                list->items.insert(list->items.end(), items.begin(), items.end());
                break;
            }
            case 0x8f: stack_.push_back(make(T::list)); break;                       // EMPTY_SET
            case 0x91: stack_.push_back(collection(T::list, pop_mark(at))); break;   // FROZENSET
            case '}': stack_.push_back(make(T::dict)); break;                        // EMPTY_DICT
            case 'd': {                                                              // DICT
                const std::vector<Obj*> items = pop_mark(at);
                Obj* dict = make(T::dict);
                add_pairs(dict, items, at);
                stack_.push_back(dict);
                break;
            }
            case 's': {  // SETITEM
                Obj* value = pop(at);
                Obj* key = pop(at);
                top(T::dict, "SETITEM", at)->entries.emplace_back(key, value);
                break;
            }
            case 'u': {  // SETITEMS
                const std::vector<Obj*> items = pop_mark(at);
                add_pairs(top(T::dict, "SETITEMS", at), items, at);
                break;
            }

            case 'g': stack_.push_back(memo_get(uint64_t(parse_int(line(), at)), at)); break;  // GET
            case 'h': stack_.push_back(memo_get(uint_le(1), at)); break;                       // BINGET
            case 'j': stack_.push_back(memo_get(uint_le(4), at)); break;                       // LONG_BINGET
            case 'p': memo_[uint64_t(parse_int(line(), at))] = top(at); break;                 // PUT
            case 'q': memo_[uint_le(1)] = top(at); break;                                      // BINPUT
            case 'r': memo_[uint_le(4)] = top(at); break;                                      // LONG_BINPUT
            case 0x94: memo_[memo_.size()] = top(at); break;                                   // MEMOIZE

            case 'c': {  // GLOBAL "module\nname\n"
                std::string module(line());
                stack_.push_back(global(std::move(module), std::string(line())));
                break;
            }
            case 0x93: {  // STACK_GLOBAL
                const Obj* name = pop(at);
                const Obj* module = pop(at);
                if (name->type != T::string || module->type != T::string) throw fail("STACK_GLOBAL on non-strings", at);
                stack_.push_back(global(module->s, name->s));
                break;
            }
            case 'R': {  // REDUCE
                const Obj* args = pop(at);
                const Obj* fn = pop(at);
                stack_.push_back(call(fn, args, at));
                break;
            }
            case 0x81: {  // NEWOBJ
                const Obj* args = pop(at);
                const Obj* cls = pop(at);
                stack_.push_back(new_object(cls, args, at));
                break;
            }
            case 0x92: {  // NEWOBJ_EX (kwargs are dropped with the args)
                pop(at);
                const Obj* args = pop(at);
                const Obj* cls = pop(at);
                stack_.push_back(new_object(cls, args, at));
                break;
            }
            case 'b': build(at); break;                                       // BUILD
            case 'Q': stack_.push_back(persistent_load(pop(at), at)); break;  // BINPERSID
            case 'P':                                                         // PERSID
                stack_.push_back(persistent_load(make_str(T::string, std::string(line())), at));
                break;

            default: {
                static const char hex[] = "0123456789abcdef";
                throw fail(std::string("unsupported pickle opcode 0x") + hex[op >> 4] + hex[op & 15], at);
            }
        }
        // clang-format on
        return false;
    }
};

}  // namespace

Pickle unpickle(const uint8_t* data, size_t size) { return Machine(data, size).run(); }

}  // namespace itera::pt
