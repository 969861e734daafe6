#include "converter/measure.h"

#include "format/itl_file.h"
#include "runtime/context.h"

namespace itera {

SpecModel load_spec(const ModelSpec& spec) {
    SpecModel m;
    m.bytes = serialize_itl(spec);
    m.model = load_model(ItlFile::from_memory(m.bytes.data(), m.bytes.size()));
    return m;
}

ModelSpec fp32_copy(const ModelSpec& spec) {
    ModelSpec fp32 = spec;
    for (SpecTensor& t : fp32.tensors) {
        t.dtype = DType::f32;
        t.packed.clear();
    }
    return fp32;
}

Scorer::Scorer(const ModelSpec& spec, std::vector<int32_t> ids) {
    const SpecModel fp32 = load_spec(fp32_copy(spec));
    Context ctx(*fp32.model);
    reference_ = std::make_unique<ReferenceLogits>(ctx, std::move(ids), fp32.model->config.max_seq_length);
}

Agreement Scorer::score(const ModelSpec& variant) const {
    const SpecModel m = load_spec(variant);
    Context ctx(*m.model);
    return reference_->compare(ctx);
}

}  // namespace itera
