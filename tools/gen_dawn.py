#!/usr/bin/env python3
"""Generate Dawn-compatible WebGPU headers and a proc table from wgpudawn's declarations.

Dawn's own headers are not available to this build, but the ``wgpudawn`` wheel ships, as plain
text, the declarations its cffi module was compiled from:

* ``webgpu_cdef.h``: the WebGPU C API of Dawn (handles, enums with values, bitflags, callback
  types, structs and every ``wgpu*`` function; the ``WGPU_*`` macros appear as ``...``);
* ``webgpu_native_extra_cdef.h``: Dawn's native extras (e.g. ``WGPUDawnTogglesDescriptor``),
  whose extra enum values are listed as ``static const int`` and are merged into their enums.

From those this script writes, under ``--out-dir``:

* ``include/webgpu/webgpu.h``: the C header (macros, types, structs, prototypes, and
  ``WGPUProc*`` function pointer types);
* ``include/webgpu/webgpu_cpp.h``: a Dawn-style C++ API in ``namespace wgpu`` (``enum class``
  enums, bitmask operators, ref-counted handle classes, layout-checked structs, lambda callback
  overloads), enough for llama.cpp's ggml-webgpu to compile unmodified;
* ``include/llama_webgpu_procs.h`` and ``llama_webgpu_procs.c``: a proc table. Every ``wgpu*``
  function is defined as a jump through a table of pointers, filled at run time from a real Dawn
  (``lwgpu_procs_set`` / ``lwgpu_procs_load_library``, or ``$LLAMA_WEBGPU_DAWN_LIB``).

Everything systematic is derived from the declarations; the WebGPU API's special cases (member
defaults, default arguments, the macro values) are the small tables below.

Usage: ``python tools/gen_dawn.py --out-dir DIR [--lib-dir PATH/TO/wgpudawn/_lib] [-v]``
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

# --- Special cases (facts of the WebGPU API, not visible in the declarations) -----------------

# Values of the WGPU_* macros, shown as "..." in the declarations; with the C++ constant names.
MACROS: dict[str, tuple[str, str | None]] = {
    "WGPU_ARRAY_LAYER_COUNT_UNDEFINED": ("UINT32_MAX", "kArrayLayerCountUndefined"),
    "WGPU_COPY_STRIDE_UNDEFINED": ("UINT32_MAX", "kCopyStrideUndefined"),
    "WGPU_DEPTH_SLICE_UNDEFINED": ("UINT32_MAX", "kDepthSliceUndefined"),
    "WGPU_LIMIT_U32_UNDEFINED": ("UINT32_MAX", "kLimitU32Undefined"),
    "WGPU_LIMIT_U64_UNDEFINED": ("UINT64_MAX", "kLimitU64Undefined"),
    "WGPU_MIP_LEVEL_COUNT_UNDEFINED": ("UINT32_MAX", "kMipLevelCountUndefined"),
    "WGPU_QUERY_SET_INDEX_UNDEFINED": ("UINT32_MAX", "kQuerySetIndexUndefined"),
    "WGPU_STRLEN": ("SIZE_MAX", "kStrlen"),
    "WGPU_WHOLE_MAP_SIZE": ("SIZE_MAX", "kWholeMapSize"),
    "WGPU_WHOLE_SIZE": ("UINT64_MAX", "kWholeSize"),
    "WGPU_TRUE": ("1", None),
    "WGPU_FALSE": ("0", None),
}

# C++ member defaults that differ from zero (struct, member) -> C++ expression.
MEMBER_DEFAULTS: dict[tuple[str, str], str] = {
    ("BindGroupEntry", "size"): "kWholeSize",
    ("BufferBindingLayout", "type"): "BufferBindingType::Undefined",
    ("SamplerBindingLayout", "type"): "SamplerBindingType::Undefined",
    ("TextureBindingLayout", "sampleType"): "TextureSampleType::Undefined",
    ("StorageTextureBindingLayout", "access"): "StorageTextureAccess::Undefined",
    # In a layout entry, a binding kind that is not set is "not used" (the zero value).
    ("BindGroupLayoutEntry", "buffer"): "{nullptr, BufferBindingType::BindingNotUsed, false, 0}",
    ("BindGroupLayoutEntry", "sampler"): "{nullptr, SamplerBindingType::BindingNotUsed}",
    ("BindGroupLayoutEntry", "texture"): (
        "{nullptr, TextureSampleType::BindingNotUsed, TextureViewDimension::Undefined, false}"
    ),
    ("BindGroupLayoutEntry", "storageTexture"): (
        "{nullptr, StorageTextureAccess::BindingNotUsed, TextureFormat::Undefined, "
        "TextureViewDimension::Undefined}"
    ),
    ("ColorTargetState", "writeMask"): "ColorWriteMask::All",
    ("DepthStencilState", "depthWriteEnabled"): "OptionalBool::Undefined",
    ("DepthStencilState", "stencilReadMask"): "0xFFFFFFFF",
    ("DepthStencilState", "stencilWriteMask"): "0xFFFFFFFF",
    ("Extent3D", "height"): "1",
    ("Extent3D", "depthOrArrayLayers"): "1",
    ("MultisampleState", "count"): "1",
    ("MultisampleState", "mask"): "0xFFFFFFFF",
    ("PassTimestampWrites", "beginningOfPassWriteIndex"): "kQuerySetIndexUndefined",
    ("PassTimestampWrites", "endOfPassWriteIndex"): "kQuerySetIndexUndefined",
    ("RenderPassColorAttachment", "depthSlice"): "kDepthSliceUndefined",
    ("RenderPassDepthStencilAttachment", "depthClearValue"): "NAN",
    ("RenderPassMaxDrawCount", "maxDrawCount"): "50000000",
    ("RenderBundleEncoderDescriptor", "sampleCount"): "1",
    ("RequestAdapterOptions", "featureLevel"): "FeatureLevel::Core",
    ("SamplerDescriptor", "lodMaxClamp"): "32.0f",
    ("SamplerDescriptor", "maxAnisotropy"): "1",
    ("TexelCopyBufferLayout", "bytesPerRow"): "kCopyStrideUndefined",
    ("TexelCopyBufferLayout", "rowsPerImage"): "kCopyStrideUndefined",
    ("TextureDescriptor", "mipLevelCount"): "1",
    ("TextureDescriptor", "sampleCount"): "1",
    ("TextureViewDescriptor", "mipLevelCount"): "kMipLevelCountUndefined",
    ("TextureViewDescriptor", "arrayLayerCount"): "kArrayLayerCountUndefined",
    ("ExternalTextureDescriptor", "rotation"): "ExternalTextureRotation::Rotate0Degrees",
}
# Structs whose every integer member defaults to "undefined limit".
LIMIT_STRUCTS = {"Limits", "CompatibilityModeLimits", "DawnHostMappedPointerLimits"}


def _defaults(methods: str, args: str) -> dict[str, dict[str, str]]:
    values = dict(a.split("=") for a in args.split())
    return {m: values for m in methods.split()}


# Trailing default arguments of C++ methods ("Class.Method", or a free function's name).
_RENDER = "RenderPassEncoder.{0} RenderBundleEncoder.{0}"
DEFAULT_ARGS: dict[str, dict[str, str]] = {
    **_defaults("Buffer.GetMappedRange Buffer.GetConstMappedRange", "offset=0 size=kWholeMapSize"),
    **_defaults("CommandEncoder.BeginComputePass CommandEncoder.Finish", "descriptor=nullptr"),
    **_defaults("Device.CreateCommandEncoder Device.CreateSampler", "descriptor=nullptr"),
    **_defaults(
        "Texture.CreateView RenderBundleEncoder.Finish CreateInstance", "descriptor=nullptr"
    ),
    **_defaults("CommandEncoder.ClearBuffer", "offset=0 size=kWholeSize"),
    **_defaults("ComputePassEncoder.DispatchWorkgroups", "workgroupCountY=1 workgroupCountZ=1"),
    **_defaults(
        "ComputePassEncoder.SetBindGroup " + _RENDER.format("SetBindGroup"),
        "dynamicOffsetCount=0 dynamicOffsets=nullptr",
    ),
    **_defaults(_RENDER.format("Draw"), "instanceCount=1 firstVertex=0 firstInstance=0"),
    **_defaults(
        _RENDER.format("DrawIndexed"), "instanceCount=1 firstIndex=0 baseVertex=0 firstInstance=0"
    ),
    **_defaults(_RENDER.format("SetVertexBuffer"), "offset=0 size=kWholeSize"),
    **_defaults(_RENDER.format("SetIndexBuffer"), "offset=0 size=kWholeSize"),
    **_defaults(
        "RenderPassEncoder.MultiDrawIndirect RenderPassEncoder.MultiDrawIndexedIndirect",
        "drawCountBuffer=nullptr drawCountBufferOffset=0",
    ),
}

# Chained extension structs filled in by the implementation (they derive from ChainedStructOut);
# the declarations do not say which struct a chained struct extends.
OUT_CHAINED = re.compile(
    r"^(AdapterProperties|DawnDrmFormatCapabilities|DawnCompilationMessage|.*Limits$"
    r"|SharedFence.*ExportInfo$|SharedTextureMemory.*End(Access)?State$)"
)

# Hand-written C++ additions to handle classes: (declaration in the class, definition).
EXTRA_METHODS: dict[str, list[tuple[str, str]]] = {
    "Instance": [
        (
            "inline WaitStatus WaitAny(Future f, uint64_t timeout) const;",
            "inline WaitStatus Instance::WaitAny(Future f, uint64_t timeout) const {\n"
            "    FutureWaitInfo waitInfo = {};\n"
            "    waitInfo.future = f;\n"
            "    return WaitAny(1, &waitInfo, timeout);\n"
            "}",
        )
    ],
}

ENV_VAR = "LLAMA_WEBGPU_DAWN_LIB"
CDEF_FILES = ("webgpu_cdef.h", "webgpu_native_extra_cdef.h")
INTS = {"int", "size_t", "int32_t", "uint16_t", "uint32_t", "uint64_t", "WGPUFlags"}
PRELUDE_TYPES = {"WGPUChainedStruct", "WGPUStringView"}  # hand-written in the C++ prelude

# --- Model --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CType:
    """A C type: base name, const on the base, and one const flag per pointer level."""

    base: str
    const: bool = False
    ptrs: tuple[bool, ...] = ()

    def render(self, base: str | None = None) -> str:
        text = (base or self.base) + (" const" if self.const else "")
        return text + "".join(" *" + (" const" if c else "") for c in self.ptrs)


@dataclass(frozen=True)
class Param:
    name: str
    type: CType

    def c_decl(self) -> str:
        return f"{self.type.render()} {self.name}"


@dataclass
class Function:
    name: str
    ret: CType
    params: list[Param]


@dataclass
class Api:
    macros: list[str] = field(default_factory=list)
    scalars: dict[str, str] = field(default_factory=dict)  # WGPUFlags -> uint64_t
    handles: list[str] = field(default_factory=list)
    enums: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    flags: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    callbacks: dict[str, Function] = field(default_factory=dict)
    structs: dict[str, list[Param]] = field(default_factory=dict)
    functions: list[Function] = field(default_factory=list)


# --- Parsing ------------------------------------------------------------------------------------


def parse_decl(text: str) -> Param:
    """Parse 'const char* const * enabledToggles' into a Param."""
    tokens = [t for t in re.findall(r"[A-Za-z_]\w*|\*", text) if t != "struct"]
    name, tokens = tokens[-1], tokens[:-1]
    base, const, ptrs = [], False, []
    for tok in tokens:
        if tok == "*":
            ptrs.append(False)
        elif tok == "const":
            if ptrs:
                ptrs[-1] = True
            else:
                const = True
        else:
            base.append(tok)
    return Param(name, CType(" ".join(base), const, tuple(ptrs)))


def parse_params(text: str) -> list[Param]:
    text = text.strip()
    if text in ("", "void"):
        return []
    return [parse_decl(p) for p in text.split(",")]


def split_statements(text: str) -> list[str]:
    """Split C declarations at ';' outside braces, with whitespace normalized."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == ";" and depth == 0:
            stmt = " ".join(text[start:i].split())
            if stmt:
                out.append(stmt)
            start = i + 1
    if text[start:].strip():
        raise ValueError(f"trailing text without ';': {text[start:].strip()[:80]!r}")
    return out


def parse(texts: list[str]) -> Api:
    api = Api()
    extras: list[tuple[str, str, int]] = []  # (type, full name, value) of static consts
    for raw in texts:
        text = re.sub(r"/\*.*?\*/", "", raw, flags=re.S)
        text = re.sub(r"//[^\n]*", "", text)
        text = re.sub(r'^\s*extern "Python".*$', "", text, flags=re.M)
        for m in re.finditer(r"^\s*#define\s+(\w+)\s+\.\.\.\s*$", text, flags=re.M):
            api.macros.append(m.group(1))
        text = re.sub(r"^\s*#.*$", "", text, flags=re.M)
        for stmt in split_statements(text):
            parse_statement(api, stmt, extras)
    for type_name, full, value in extras:
        enum, _, _ = full.partition("_")
        if type_name in api.flags:
            api.flags[type_name].append((full, value))
        elif type_name == "int" and enum in api.enums:
            if all(n != full for n, _ in api.enums[enum]):
                api.enums[enum].append((full, value))
        else:
            raise ValueError(f"constant {full} of type {type_name} belongs to no enum")
    return api


def parse_statement(api: Api, s: str, extras: list[tuple[str, str, int]]) -> None:
    if m := re.fullmatch(r"typedef struct (\w+)Impl ?\* ?(WGPU\w+)", s):
        api.handles.append(m.group(2))
    elif re.fullmatch(r"struct WGPU\w+", s):
        pass  # forward declaration
    elif m := re.fullmatch(r"typedef (u?int\d+_t) (WGPU\w+)", s):
        api.scalars[m.group(2)] = m.group(1)
    elif m := re.fullmatch(r"typedef WGPUFlags (WGPU\w+)", s):
        api.flags[m.group(1)] = []
    elif m := re.fullmatch(r"static const (\w+) (WGPU\w+) = (\w+)", s):
        extras.append((m.group(1), m.group(2), int(m.group(3), 0)))
    elif m := re.fullmatch(r"typedef enum (WGPU\w+) \{(.*)\} \1 ?", s):
        values = []
        for item in m.group(2).split(","):
            name, _, value = item.partition("=")
            if not name.strip().endswith("_Force32"):
                values.append((name.strip(), int(value, 0)))
        api.enums[m.group(1)] = values
    elif m := re.fullmatch(r"typedef (.+?) ?\( ?\* ?(WGPU\w+) ?\) ?\((.*)\) ?", s):
        api.callbacks[m.group(2)] = Function(
            m.group(2), parse_decl(m.group(1) + " r").type, parse_params(m.group(3))
        )
    elif m := re.fullmatch(r"typedef struct (WGPU\w+) \{(.*)\} \1 ?", s):
        body = [d for d in m.group(2).split(";") if d.strip()]
        api.structs[m.group(1)] = [parse_decl(d) for d in body]
    elif m := re.fullmatch(r"(.+?) ?\b(wgpu[A-Z]\w*) ?\((.*)\) ?", s):
        ret = parse_decl(m.group(1) + " r").type
        api.functions.append(Function(m.group(2), ret, parse_params(m.group(3))))
    else:
        raise ValueError(f"unrecognized declaration: {s[:100]!r}")


# --- Helpers shared by the generators -----------------------------------------------------------


def cpp_name(c_name: str) -> str:
    return c_name[4:] if c_name.startswith("WGPU") else c_name


def enumerator(enum: str, full: str) -> str:
    name = full[len(enum) + 1 :]
    return "e" + name if name[0].isdigit() else name


def struct_order(api: Api) -> list[str]:
    """Structs with every struct they hold by value first (C and C++ need complete types)."""
    done: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in done:
            return
        if name in stack:
            raise ValueError(f"struct cycle through {name}")
        for p in api.structs[name]:
            if not p.type.ptrs and p.type.base in api.structs:
                visit(p.type.base, (*stack, name))
        done.append(name)

    for name in api.structs:
        visit(name, ())
    return done


def write_if_changed(path: Path, text: str) -> bool:
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return True


HEADER_NOTE = "Generated by tools/gen_dawn.py from wgpudawn's declarations. Do not edit."

# --- webgpu.h -----------------------------------------------------------------------------------


def gen_c_header(api: Api) -> str:
    out = [
        f"/* {HEADER_NOTE} */",
        "#ifndef LLAMA_WEBGPU_WEBGPU_H_",
        "#define LLAMA_WEBGPU_WEBGPU_H_",
    ]
    out += ["", "#include <stddef.h>", "#include <stdint.h>", ""]
    for name in api.macros:
        if name not in MACROS:
            raise ValueError(f"no value known for macro {name}; add it to MACROS")
        out.append(f"#define {name} ({MACROS[name][0]})")
    out.append("")
    for name, scalar in api.scalars.items():
        out.append(f"typedef {scalar} {name};")
    out += [f"typedef struct {h}Impl* {h};" for h in api.handles]
    out += [f"typedef struct {s} {s};" for s in api.structs]
    out.append("")
    for enum, values in api.enums.items():
        out.append(f"typedef enum {enum} {{")
        out += [f"    {name} = 0x{value:08X}," for name, value in values]
        out += [f"    {enum}_Force32 = 0x7FFFFFFF", f"}} {enum};", ""]
    for flag, values in api.flags.items():
        out.append(f"typedef WGPUFlags {flag};")
        out += [f"static const {flag} {name} = 0x{value:016X};" for name, value in values]
        out.append("")
    for cb in api.callbacks.values():
        params = ", ".join(p.c_decl() for p in cb.params) or "void"
        out.append(f"typedef {cb.ret.render()} (*{cb.name})({params});")
    out.append("")
    for name in struct_order(api):
        out.append(f"struct {name} {{")
        out += [f"    {p.c_decl()};" for p in api.structs[name]]
        out += ["};", ""]
    for fn in api.functions:
        params = ", ".join(p.c_decl() for p in fn.params) or "void"
        out.append(f"typedef {fn.ret.render()} (*WGPUProc{fn.name[4:]})({params});")
    out += ["", "#ifdef __cplusplus", 'extern "C" {', "#endif"]
    for fn in api.functions:
        params = ", ".join(p.c_decl() for p in fn.params) or "void"
        out.append(f"{fn.ret.render()} {fn.name}({params});")
    out += ["#ifdef __cplusplus", '}  /* extern "C" */', "#endif", "", "#endif", ""]
    return "\n".join(out)


# --- webgpu_cpp.h -------------------------------------------------------------------------------

CPP_PRELUDE_HEAD = r"""
namespace detail {
template <typename T> struct IsBitmask : std::false_type {};
constexpr size_t ConstexprMax(size_t a, size_t b) { return a > b ? a : b; }

// Copies between a C++ type and its layout-identical C type (the static_asserts below check
// the layouts).
template <typename C, typename T> inline C AsC(T const& value) {
    static_assert(sizeof(C) == sizeof(T), "C and C++ types differ in size");
    C result;
    std::memcpy(&result, static_cast<void const*>(&value), sizeof(C));
    return result;
}
template <typename T, typename C> inline T FromC(C const& value) {
    static_assert(sizeof(C) == sizeof(T) && std::is_trivially_copyable_v<T>, "not a plain copy");
    T result;
    std::memcpy(static_cast<void*>(&result), &value, sizeof(T));
    return result;
}
}  // namespace detail
"""

CPP_PRELUDE = r"""
// What bitmask operators return: the mask, also usable as a bool (`if (usage & MapRead)`).
template <typename T> struct BoolConvertible {
    T value;
    constexpr operator T() const { return value; }
    constexpr operator bool() const { return static_cast<std::underlying_type_t<T>>(value) != 0; }
};

namespace detail {
template <typename T> struct MaskOf {};
template <typename T> requires IsBitmask<T>::value struct MaskOf<T> {
    using type = T;
    static constexpr T Get(T v) { return v; }
};
template <typename T> struct MaskOf<BoolConvertible<T>> {
    using type = T;
    static constexpr T Get(BoolConvertible<T> v) { return v.value; }
};
template <typename A> concept Mask = requires { typename MaskOf<A>::type; };
template <typename A, typename B>
concept MaskPair = Mask<A> && Mask<B> &&
                   std::is_same_v<typename MaskOf<A>::type, typename MaskOf<B>::type>;
template <typename A> using MaskType = typename MaskOf<A>::type;
template <typename A> constexpr auto Bits(A v) {
    return static_cast<std::underlying_type_t<MaskType<A>>>(MaskOf<A>::Get(v));
}
template <typename A, typename U = std::underlying_type_t<MaskType<A>>>
constexpr BoolConvertible<MaskType<A>> Make(U v) {
    return {static_cast<MaskType<A>>(v)};
}
}  // namespace detail

template <typename A, typename B> requires detail::MaskPair<A, B>
constexpr BoolConvertible<detail::MaskType<A>> operator|(A a, B b) {
    return detail::Make<A>(detail::Bits(a) | detail::Bits(b));
}
template <typename A, typename B> requires detail::MaskPair<A, B>
constexpr BoolConvertible<detail::MaskType<A>> operator&(A a, B b) {
    return detail::Make<A>(detail::Bits(a) & detail::Bits(b));
}
template <typename A, typename B> requires detail::MaskPair<A, B>
constexpr BoolConvertible<detail::MaskType<A>> operator^(A a, B b) {
    return detail::Make<A>(detail::Bits(a) ^ detail::Bits(b));
}
template <typename A> requires detail::Mask<A>
constexpr BoolConvertible<detail::MaskType<A>> operator~(A a) {
    return detail::Make<A>(~detail::Bits(a));
}
template <typename T, typename B> requires detail::IsBitmask<T>::value && detail::MaskPair<T, B>
constexpr T& operator|=(T& a, B b) { return a = a | b; }
template <typename T, typename B> requires detail::IsBitmask<T>::value && detail::MaskPair<T, B>
constexpr T& operator&=(T& a, B b) { return a = a & b; }
template <typename T, typename B> requires detail::IsBitmask<T>::value && detail::MaskPair<T, B>
constexpr T& operator^=(T& a, B b) { return a = a ^ b; }

// WGPUBool as a class: converts from and to bool, and is four bytes like the C type.
class Bool {
  public:
    constexpr Bool() = default;
    constexpr Bool(bool value) : mValue(static_cast<WGPUBool>(value)) {}
    explicit constexpr Bool(WGPUBool value) : mValue(value) {}
    constexpr operator bool() const { return mValue != 0; }

  private:
    WGPUBool mValue = 0;
};

// A string that is not necessarily null-terminated: {data, length}, where length kStrlen means
// "null-terminated" and {nullptr, kStrlen} means "no string".
struct StringView {
    char const * data = nullptr;
    size_t length = WGPU_STRLEN;

    constexpr StringView() = default;
    constexpr StringView(char const * s, size_t len) : data(s), length(len) {}
    constexpr StringView(char const * s) : data(s) {}
    constexpr StringView(std::nullptr_t) {}
    constexpr StringView(std::string_view s) : data(s.data()), length(s.size()) {}
    StringView(std::string const& s) : data(s.data()), length(s.size()) {}
    constexpr StringView(WGPUStringView s) : data(s.data), length(s.length) {}

    constexpr operator WGPUStringView() const { return {data, length}; }
    constexpr operator std::string_view() const {
        if (length != WGPU_STRLEN) return {data, length};
        return data != nullptr ? std::string_view(data) : std::string_view();
    }
    constexpr bool IsUndefined() const { return data == nullptr && length == WGPU_STRLEN; }
};

// Heads of extension chains: ChainedStruct for what the application passes in,
// ChainedStructOut for what the implementation fills in.
struct ChainedStruct {
    ChainedStruct const * nextInChain = nullptr;
    SType sType = SType(0u);
};
struct ChainedStructOut {
    ChainedStructOut * nextInChain = nullptr;
    SType sType = SType(0u);
};

using Proc = WGPUProc;

namespace detail {
// Base of the handle classes: owns one reference to the C handle.
template <typename Derived, typename CType> class ObjectBase {
  public:
    ObjectBase() = default;
    ObjectBase(CType handle) : mHandle(handle) {
        if (mHandle != nullptr) Derived::WGPUAddRef(mHandle);
    }
    ObjectBase(std::nullptr_t) {}
    ~ObjectBase() {
        if (mHandle != nullptr) Derived::WGPURelease(mHandle);
    }
    ObjectBase(ObjectBase const& other) : ObjectBase(other.Get()) {}
    ObjectBase(ObjectBase&& other) noexcept : mHandle(other.mHandle) { other.mHandle = nullptr; }
    Derived& operator=(ObjectBase const& other) {
        if (&other != this) {
            if (other.mHandle != nullptr) Derived::WGPUAddRef(other.mHandle);
            if (mHandle != nullptr) Derived::WGPURelease(mHandle);
            mHandle = other.mHandle;
        }
        return static_cast<Derived&>(*this);
    }
    Derived& operator=(ObjectBase&& other) noexcept {
        if (&other != this) {
            if (mHandle != nullptr) Derived::WGPURelease(mHandle);
            mHandle = other.mHandle;
            other.mHandle = nullptr;
        }
        return static_cast<Derived&>(*this);
    }
    Derived& operator=(std::nullptr_t) {
        if (mHandle != nullptr) Derived::WGPURelease(mHandle);
        mHandle = nullptr;
        return static_cast<Derived&>(*this);
    }

    bool operator==(std::nullptr_t) const { return mHandle == nullptr; }
    bool operator==(ObjectBase const& other) const { return mHandle == other.mHandle; }
    explicit operator bool() const { return mHandle != nullptr; }

    CType Get() const { return mHandle; }
    CType MoveToCHandle() {
        CType result = mHandle;
        mHandle = nullptr;
        return result;
    }
    // Takes over a reference the caller owns (no AddRef).
    static Derived Acquire(CType handle) {
        Derived result;
        static_cast<ObjectBase&>(result).mHandle = handle;
        return result;
    }

  protected:
    CType mHandle = nullptr;
};
}  // namespace detail
"""


class CppGen:
    """Builds webgpu_cpp.h from the parsed API."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.handles = set(api.handles)
        self.enums = set(api.enums)
        self.flags = set(api.flags)
        self.handle_fns: dict[str, list[Function]] = {h: [] for h in api.handles}
        self.free_members: dict[str, Function] = {}
        self.globals: list[Function] = []
        for fn in api.functions:
            first = fn.params[0].type if fn.params else None
            if first and not first.ptrs and first.base in self.handles:
                self.handle_fns[first.base].append(fn)
            elif fn.name.endswith("FreeMembers") and first and first.base in api.structs:
                self.free_members[first.base] = fn
            else:
                self.globals.append(fn)
        # Callback infos: structs with a 'callback' member whose type ends in two userdatas.
        self.cb_infos: dict[str, Function] = {}
        for name, members in api.structs.items():
            cb = next((m for m in members if m.name == "callback"), None)
            cb_fn = api.callbacks.get(cb.type.base) if cb else None
            if cb_fn and [p.name for p in cb_fn.params[-2:]] == ["userdata1", "userdata2"]:
                self.cb_infos[name] = cb_fn
        self.out_structs = self._out_structs()

    def _out_structs(self) -> set[str]:
        api, out = self.api, set(self.free_members)
        for fn in api.functions:  # filled in through a non-const pointer
            out |= {p.type.base for p in fn.params if p.type.ptrs and not p.type.const}
        for cb in api.callbacks.values():  # handed to a callback
            out |= {p.type.base for p in cb.params if p.type.ptrs}
        out &= set(api.structs)
        out |= {s for s in api.structs if self.chained(s) and OUT_CHAINED.match(cpp_name(s))}
        todo = list(out)
        while todo:
            for m in api.structs[todo.pop()]:
                if m.type.base in api.structs and m.type.base not in out | PRELUDE_TYPES:
                    out.add(m.type.base)
                    todo.append(m.type.base)
        return out - PRELUDE_TYPES

    def chained(self, struct: str) -> bool:
        members = self.api.structs[struct]
        return bool(members) and members[0].type == CType("WGPUChainedStruct")

    # -- type mapping

    def cpp_type(self, t: CType, param: bool = False) -> str:
        """The C++ spelling of a C type (a struct member, or with param=True an argument)."""
        b = t.base
        if b in self.handles and not t.ptrs and param:
            return f"{cpp_name(b)} const &"
        if b in self.handles or b in self.enums or b in self.flags or b in self.api.structs:
            return t.render(cpp_name(b))
        if b == "WGPUBool":
            return t.render("Bool")
        return t.render()

    def to_c(self, name: str, t: CType) -> str:
        """Expression passing C++ argument `name` to the C function."""
        b = t.base
        if b in self.handles:
            return f"{name}.Get()" if not t.ptrs else f"reinterpret_cast<{t.render()}>({name})"
        if b in self.api.structs:
            if t.ptrs:
                return f"reinterpret_cast<{t.render()}>({name})"
            return f"detail::AsC<{b}>({name})"
        if b in self.enums or b in self.flags or b == "WGPUBool":
            return (
                f"static_cast<{b}>({name})"
                if not t.ptrs
                else f"reinterpret_cast<{t.render()}>({name})"
            )
        return name

    def from_c(self, expr: str, t: CType) -> str:
        """Expression converting a C value to its C++ type (returns and callback arguments)."""
        b = t.base
        if t.ptrs:
            if b in self.handles and t.const:
                return f"*reinterpret_cast<{cpp_name(b)} const *>({expr})"
            if b in self.api.structs or b in self.handles or b in self.enums:
                return f"reinterpret_cast<{self.cpp_type(t)}>({expr})"
            return expr
        if b in self.handles:
            return f"{cpp_name(b)}::Acquire({expr})"
        if b in self.enums or b in self.flags:
            return f"static_cast<{cpp_name(b)}>({expr})"
        if b == "WGPUBool":
            return f"Bool({expr})"
        if b == "WGPUStringView":
            return f"StringView({expr})"
        if b in self.api.structs:
            return f"detail::FromC<{cpp_name(b)}>({expr})"
        return expr

    def lambda_arg_type(self, t: CType) -> str:
        if t.base in self.handles and t.ptrs == (False,) and t.const:
            return f"{cpp_name(t.base)} const &"
        return self.cpp_type(t)

    # -- pieces

    def gen_enums(self) -> list[str]:
        out = []
        for enum, values in self.api.enums.items():
            out.append(f"enum class {cpp_name(enum)} : uint32_t {{")
            out += [f"    {enumerator(enum, n)} = 0x{v:08X}," for n, v in values]
            out += ["};", ""]
        for flag, values in self.api.flags.items():
            out.append(f"enum class {cpp_name(flag)} : uint64_t {{")
            out += [f"    {enumerator(flag, n)} = 0x{v:016X}," for n, v in values]
            out += ["};"]
            out += [
                f"template <> struct detail::IsBitmask<{cpp_name(flag)}> : std::true_type {{}};",
                "",
            ]
        return out

    def method_params(self, owner: str, method: str, params: list[Param]) -> list[str]:
        defaults = DEFAULT_ARGS.get(f"{owner}.{method}" if owner else method, {})
        out, trailing = [], True
        for p in reversed(params):
            decl = f"{self.cpp_type(p.type, param=True)} {p.name}"
            if trailing and p.name in defaults:
                decl += f" = {defaults[p.name]}"
            else:
                trailing = False
            out.append(decl)
        return out[::-1]

    def call(self, fn: Function, args: list[str]) -> list[str]:
        call = f"{fn.name}({', '.join(args)})"
        if fn.ret == CType("void"):
            return [f"    {call};"]
        return [f"    auto result = {call};", f"    return {self.from_c('result', fn.ret)};"]

    def ret_type(self, fn: Function) -> str:
        return "Proc" if fn.ret.base == "WGPUProc" else self.cpp_type(fn.ret)

    def gen_method(self, owner: str, fn: Function) -> tuple[list[str], list[str]]:
        """Declarations (in the class) and definitions of one C function as methods."""
        method = fn.name[4 + len(owner) :] if owner else fn.name[4:]
        params = fn.params[1:] if owner else fn.params
        ret = self.ret_type(fn)
        this_arg = ["Get()"] if owner else []
        qual, const = (f"{owner}::", " const") if owner else ("", "")
        decls, defs = [], []
        decl_params = ", ".join(self.method_params(owner, method, params))
        plain = ", ".join(f"{self.cpp_type(p.type, param=True)} {p.name}" for p in params)
        decls.append(f"inline {ret} {method}({decl_params}){const};")
        defs.append(f"inline {ret} {qual}{method}({plain}){const} {{")
        for p in params:  # an out-struct that owns memory frees it before being filled again
            if p.type.base in self.free_members and p.type.ptrs == (False,):
                defs.append(f"    if ({p.name} != nullptr) {p.name}->FreeMembers();")
        defs += [*self.call(fn, this_arg + [self.to_c(p.name, p.type) for p in params]), "}"]
        info = params[-1].type.base if params else ""
        if info in self.cb_infos and not params[-1].type.ptrs:
            info_cpp = cpp_name(info)
            head = [f"{self.cpp_type(p.type, param=True)} {p.name}" for p in params[:-1]]
            mode = ["CallbackMode callbackMode"] if self.has_mode(info) else []
            mode_arg = ["callbackMode"] if mode else []
            args = [*this_arg, *(self.to_c(p.name, p.type) for p in params[:-1]), "callbackInfo"]
            for tmpl, tail, maker in (
                (
                    "template <typename L>",
                    ["L callback"],
                    "Lambda(" + ", ".join([*mode_arg, "std::move(callback)"]),
                ),
                (
                    "template <typename F, typename T>",
                    ["F callback", "T userdata"],
                    "Fn<T>(" + ", ".join([*mode_arg, "callback", "userdata"]),
                ),
            ):
                sig = ", ".join(head + mode + tail)
                decls.append(f"{tmpl} {ret} {method}({sig}){const};")
                defs += [f"{tmpl}", f"{ret} {qual}{method}({sig}){const} {{"]
                defs.append(f"    auto callbackInfo = detail::{info_cpp}From{maker});")
                defs += [*self.call(fn, args), "}"]
        return decls, defs

    def has_mode(self, info: str) -> bool:
        return any(m.name == "mode" for m in self.api.structs[info])

    def gen_handles(self) -> tuple[list[str], list[str]]:
        decls, defs = [], []
        for h in self.api.handles:
            name = cpp_name(h)
            fns = {f.name: f for f in self.handle_fns[h]}
            addref = fns.pop(f"wgpu{name}AddRef", None)
            fns.pop(f"wgpu{name}Release")  # AddRef and Release are used by ObjectBase
            decls += [
                f"class {name} : public detail::ObjectBase<{name}, {h}> {{",
                "  public:",
                "    using ObjectBase::ObjectBase;",
            ]
            if addref is None:  # no AddRef: a move-only handle
                decls += [
                    f"    {name}() = default;",
                    f"    {name}({name} const&) = delete;",
                    f"    {name}& operator=({name} const&) = delete;",
                    f"    {name}({name}&&) = default;",
                    f"    {name}& operator=({name}&&) = default;",
                ]
            for fn in fns.values():
                d, body = self.gen_method(name, fn)
                decls += ["    " + x for x in d]
                defs += body
            for decl, body in EXTRA_METHODS.get(name, []):
                decls.append("    " + decl)
                defs.append(body)
            decls += ["", "  private:", f"    friend class detail::ObjectBase<{name}, {h}>;"]
            if addref:
                decls.append(
                    f"    static void WGPUAddRef({h} handle) {{ wgpu{name}AddRef(handle); }}"
                )
            decls += [
                f"    static void WGPURelease({h} handle) {{ wgpu{name}Release(handle); }}",
                "};",
                f'static_assert(sizeof({name}) == sizeof({h}), "sizeof mismatch for {name}");',
                "",
            ]
        return decls, defs

    def gen_callback_helpers(self) -> list[str]:
        """Per callback info: trampolines and makers for lambdas and (function, userdata)."""
        out = ["namespace detail {"]
        for info, cb in self.cb_infos.items():
            cname = cpp_name(info)
            params = cb.params[:-2]
            c_params = ", ".join(p.c_decl() for p in params)
            sep = ", " if params else ""
            conv = ", ".join(self.from_c(p.name, p.type) for p in params)
            types = ", ".join(self.lambda_arg_type(p.type) for p in params)
            once = self.has_mode(info)
            mode_param = "CallbackMode mode, " if once else ""
            set_mode = ["    info.mode = static_cast<WGPUCallbackMode>(mode);"] if once else []
            out += [
                "template <typename L>",
                f"void {cname}Lambda({c_params}{sep}void* userdata1, void*) {{",
                "    if constexpr (std::is_empty_v<L> && std::is_default_constructible_v<L>) {",
                "        (void)userdata1;",
                f"        L{{}}({conv});",
            ]
            if once:  # called exactly once: the lambda is freed after the call
                out += [
                    "    } else {",
                    "        std::unique_ptr<L> lambda(static_cast<L*>(userdata1));",
                    f"        (*lambda)({conv});",
                    "    }",
                ]
            else:  # called many times: the lambda lives as long as the program
                out += ["    } else {", f"        (*static_cast<L*>(userdata1))({conv});", "    }"]
            out += [
                "}",
                "template <typename T>",
                f"void {cname}Fn({c_params}{sep}void* userdata1, void* userdata2) {{",
                f"    auto fn = reinterpret_cast<void (*)({types}{sep}T)>(userdata1);",
                f"    fn({conv}{sep}static_cast<T>(userdata2));",
                "}",
                "template <typename L>",
                f"{info} {cname}FromLambda({mode_param}L&& callback) {{",
                "    using F = std::decay_t<L>;",
                f"    static_assert(std::is_invocable_v<F&{sep}{types}>,",
                f'                  "the callback must be callable as void({types})");',
                f"    {info} info = {{}};",
                *set_mode,
                f"    info.callback = &{cname}Lambda<F>;",
                "    if constexpr (std::is_empty_v<F> && std::is_default_constructible_v<F>) {",
                "        (void)callback;",
                "    } else {",
                "        info.userdata1 = new F(std::forward<L>(callback));",
                "    }",
                "    return info;",
                "}",
                "template <typename T>",
                f"{info} {cname}FromFn({mode_param}void (*callback)({types}{sep}T), T userdata) {{",
                '    static_assert(std::is_pointer_v<T>, "userdata must be a pointer");',
                f"    {info} info = {{}};",
                *set_mode,
                f"    info.callback = &{cname}Fn<T>;",
                "    info.userdata1 = reinterpret_cast<void*>(callback);",
                "    info.userdata2 = const_cast<void*>(",
                "        static_cast<void const volatile*>(userdata));",
                "    return info;",
                "}",
                "",
            ]
        out += ["}  // namespace detail", ""]
        return out

    def member_default(self, struct: str, m: Param) -> str:
        s = cpp_name(struct)
        if (s, m.name) in MEMBER_DEFAULTS:
            return MEMBER_DEFAULTS[(s, m.name)]
        if s in LIMIT_STRUCTS and not m.type.ptrs and m.type.base in ("uint32_t", "uint64_t"):
            return "kLimitU32Undefined" if m.type.base == "uint32_t" else "kLimitU64Undefined"
        if m.type.base == "WGPUBool" and not m.type.ptrs:
            return "false"
        if m.type.ptrs or m.type.base in self.handles or m.type.base in self.api.callbacks:
            return "nullptr"
        return {"float": "0.0f", "double": "0.0"}.get(
            m.type.base, "0" if m.type.base in INTS else "{}"
        )

    def gen_struct(self, struct: str) -> list[str]:
        name, members = cpp_name(struct), self.api.structs[struct]
        out_struct = struct in self.out_structs
        chain_type = "ChainedStructOut" if out_struct else "ChainedStruct"
        chained = self.chained(struct)
        if chained:
            members = members[1:]
        base = f" : {chain_type}" if chained else ""
        out = [f"struct {name}{base} {{"]
        frees = self.free_members.get(struct)
        if chained:
            if all(n != f"WGPUSType_{name}" for n, _ in self.api.enums["WGPUSType"]):
                raise ValueError(f"chained struct {struct} has no WGPUSType_{name}")
            out.append(f"    {name}() : {chain_type}{{nullptr, SType::{name}}} {{}}")
        elif frees:
            out.append(f"    {name}() = default;")
        for i, m in enumerate(members):
            if m.name == "nextInChain" and m.type.base == "WGPUChainedStruct":
                ptr = "ChainedStructOut *" if out_struct else "ChainedStruct const *"
                out.append(f"    {ptr} nextInChain = nullptr;")
                continue
            ctype = self.cpp_type(m.type)
            align = ""
            if chained and i == 0:
                align = f"alignas(detail::ConstexprMax(alignof({chain_type}), alignof({ctype}))) "
            out.append(f"    {align}{ctype} {m.name} = {self.member_default(struct, m)};")
        for m in members:
            if m.type.base in self.cb_infos and not m.type.ptrs:
                out += self.gen_set_callback(m)
        if frees:
            out += self.gen_free_members(struct, name, members, frees)
        out += ["};", ""]
        return out

    def gen_set_callback(self, m: Param) -> list[str]:
        info = m.type.base
        setter = "Set" + m.name[0].upper() + m.name[1:].removesuffix("Info")
        mode = ["CallbackMode mode"] if self.has_mode(info) else []
        margs = ["mode"] if mode else []
        cname = cpp_name(info)
        lam = ", ".join([*mode, "L callback"])
        fnp = ", ".join([*mode, "F callback", "T userdata"])
        return [
            f"    template <typename L> void {setter}({lam}) {{",
            f"        {m.name} = detail::FromC<{cname}>(detail::{cname}FromLambda("
            + ", ".join([*margs, "std::move(callback)"])
            + "));",
            "    }",
            f"    template <typename F, typename T> void {setter}({fnp}) {{",
            f"        {m.name} = detail::FromC<{cname}>(detail::{cname}FromFn<T>("
            + ", ".join([*margs, "callback", "userdata"])
            + "));",
            "    }",
        ]

    def gen_free_members(
        self, struct: str, name: str, members: list[Param], fn: Function
    ) -> list[str]:
        """Move-only out-struct whose members the implementation allocates."""
        owned = [
            f"{m.name}.data != nullptr"
            if m.type.base == "WGPUStringView"
            else f"{m.name} != nullptr"
            for m in members
            if m.name != "nextInChain" and (m.type.ptrs or m.type.base == "WGPUStringView")
        ]
        data = [m for m in members if m.name != "nextInChain"]
        return [
            f"    ~{name}() {{ FreeMembers(); }}",
            f"    {name}({name} const&) = delete;",
            f"    {name}& operator=({name} const&) = delete;",
            f"    {name}({name}&& rhs) noexcept : {name}() {{ TakeFrom(rhs); }}",
            f"    {name}& operator=({name}&& rhs) noexcept {{",
            "        if (&rhs != this) {",
            "            FreeMembers();",
            "            TakeFrom(rhs);",
            "        }",
            "        return *this;",
            "    }",
            "    // Frees what the implementation allocated; resets the members, not the chain.",
            "    void FreeMembers() {",
            f"        if ({' || '.join(owned) or 'true'}) {{",
            f"            {fn.name}(detail::AsC<{struct}>(*this));",
            "        }",
            *(f"        {m.name} = {self.member_default(struct, m)};" for m in data),
            "    }",
            "",
            "  private:",
            f"    void TakeFrom({name}& rhs) {{",
            *(f"        {m.name} = rhs.{m.name};" for m in members),
            *(f"        rhs.{m.name} = {self.member_default(struct, m)};" for m in data),
            "    }",
            "",
            "  public:",
        ]

    def gen_layout_asserts(self, order: list[str]) -> list[str]:
        out = [
            "#pragma GCC diagnostic push",
            '#pragma GCC diagnostic ignored "-Winvalid-offsetof"',
            'static_assert(sizeof(ChainedStruct) == sizeof(WGPUChainedStruct), "chain");',
            'static_assert(sizeof(ChainedStructOut) == sizeof(WGPUChainedStruct), "chain");',
            "static_assert(offsetof(ChainedStruct, sType) == offsetof(WGPUChainedStruct, sType));",
            'static_assert(sizeof(StringView) == sizeof(WGPUStringView), "StringView");',
            "static_assert(offsetof(StringView, length) == offsetof(WGPUStringView, length));",
            'static_assert(sizeof(Bool) == sizeof(WGPUBool), "Bool");',
        ]
        for e in [*self.api.enums, *self.api.flags]:
            out.append(
                f'static_assert(sizeof({cpp_name(e)}) == sizeof({e}), "sizeof {cpp_name(e)}");'
            )
        for s in order:
            n = cpp_name(s)
            out.append(f'static_assert(sizeof({n}) == sizeof({s}), "sizeof mismatch for {n}");')
            out.append(f'static_assert(alignof({n}) == alignof({s}), "alignof mismatch for {n}");')
            for m in self.api.structs[s]:
                pairs = [(m.name, m.name)]
                if m.name == "chain" and self.chained(s):
                    pairs = [("nextInChain", "chain.next"), ("sType", "chain.sType")]
                for cpp_m, c_m in pairs:
                    out.append(
                        f"static_assert(offsetof({n}, {cpp_m}) == offsetof({s}, {c_m}), "
                        f'"offsetof mismatch for {n}::{cpp_m}");'
                    )
        out += ["#pragma GCC diagnostic pop", ""]
        return out

    def generate(self) -> str:
        order = [s for s in struct_order(self.api) if s not in PRELUDE_TYPES]
        handle_decls, handle_defs = self.gen_handles()
        free_decls, free_defs = [], []
        for fn in self.globals:
            d, body = self.gen_method("", fn)
            free_decls += d
            free_defs += body
        out = [
            f"// {HEADER_NOTE}",
            "#ifndef LLAMA_WEBGPU_WEBGPU_CPP_H_",
            "#define LLAMA_WEBGPU_WEBGPU_CPP_H_",
            "",
            "#include <webgpu/webgpu.h>",
            "",
        ]
        out += [f"#include <{h}>" for h in ("cmath", "cstddef", "cstdint", "cstring", "memory")]
        out += [f"#include <{h}>" for h in ("string", "string_view", "type_traits", "utility")]
        out += ["", "namespace wgpu {", ""]
        for name, (_, const) in MACROS.items():
            if const:
                ctype = {"UINT32_MAX": "uint32_t", "UINT64_MAX": "uint64_t"}.get(
                    MACROS[name][0], "size_t"
                )
                out.append(f"static constexpr {ctype} {const} = {name};")
        out += [""]
        out += [*CPP_PRELUDE_HEAD.strip("\n").splitlines(), ""]
        out += self.gen_enums()
        out += [*CPP_PRELUDE.strip("\n").splitlines(), ""]
        out += [f"struct {cpp_name(s)};" for s in order]
        out += [f"class {cpp_name(h)};" for h in self.api.handles]
        out += ["", *handle_decls]
        out += self.gen_callback_helpers()
        for s in order:
            out += self.gen_struct(s)
        out += [*free_decls, ""]
        out += self.gen_layout_asserts(order)
        out += [*handle_defs, "", *free_defs, ""]
        out += ["}  // namespace wgpu", "", "#endif  // LLAMA_WEBGPU_WEBGPU_CPP_H_", ""]
        return "\n".join(out)


# --- llama_webgpu_procs.h / .c ------------------------------------------------------------------

PROCS_HEADER = f"""/* {HEADER_NOTE} */
/* The Dawn proc table: every wgpu* function of webgpu.h jumps through a table of pointers that
 * is filled at run time from a real Dawn. A call whose pointer is still empty first tries, once,
 * to load the library named by ${ENV_VAR}; failing that it prints why and aborts. */
#ifndef LLAMA_WEBGPU_PROCS_H_
#define LLAMA_WEBGPU_PROCS_H_

#include <stddef.h>

#define LWGPU_PROCS_ENV "{ENV_VAR}"

#if defined(__GNUC__)
#define LWGPU_PROCS_API __attribute__((visibility("default")))
#else
#define LWGPU_PROCS_API
#endif

#ifdef __cplusplus
extern "C" {{
#endif

/* Number of wgpu* functions in the table, and the name of entry i (NULL past the end). */
LWGPU_PROCS_API size_t lwgpu_procs_count(void);
LWGPU_PROCS_API const char *lwgpu_procs_name(size_t i);
/* Point the table entry `name` at fn (NULL empties it). Returns 0, -1 for an unknown name, or -2
 * when fn is the table's own entry point for that name (which would call itself forever). */
LWGPU_PROCS_API int lwgpu_procs_set(const char *name, void *fn);
/* Number of entries that are still empty. */
LWGPU_PROCS_API size_t lwgpu_procs_missing(void);
/* dlopen(path) and set every entry the library exports. Returns 0, or -1 (see last_error) when
 * the library cannot be loaded or exports none of the functions. */
LWGPU_PROCS_API int lwgpu_procs_load_library(const char *path);
/* Why the calling thread's last lwgpu_procs_load_library failed ("" if it did not). */
LWGPU_PROCS_API const char *lwgpu_procs_last_error(void);

#ifdef __cplusplus
}}
#endif

#endif
"""

PROCS_RUNTIME = r"""
static pthread_once_t lwgpu_autoload_once = PTHREAD_ONCE_INIT;
static char lwgpu_autoload_error[1024];
static _Thread_local char lwgpu_error[1024];

static WGPUProc lwgpu_from_pointer(void *p) {
    WGPUProc fn;
    memcpy(&fn, &p, sizeof fn); /* object to function pointer, as POSIX dlsym allows */
    return fn;
}

static int lwgpu_compare(const void *key, const void *entry) {
    return strcmp((const char *) key, *(const char *const *) entry);
}

static long lwgpu_find(const char *name) {
    const char *const *hit;
    if (name == NULL) return -1;
    hit = bsearch(name, lwgpu_names, LWGPU_COUNT, sizeof lwgpu_names[0], lwgpu_compare);
    return hit ? (long) (hit - lwgpu_names) : -1;
}

/* Fills entries from the library at path: all found ones, or only empty ones. */
static int lwgpu_load(const char *path, int overwrite, char *err, size_t err_size) {
    void *lib;
    size_t i, found = 0;
    if (path == NULL || path[0] == '\0') {
        snprintf(err, err_size, "no library path given");
        return -1;
    }
    lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        const char *why = dlerror();
        snprintf(err, err_size, "dlopen failed: %s", why ? why : path);
        return -1;
    }
    for (i = 0; i < LWGPU_COUNT; i++) {
        void *sym = dlsym(lib, lwgpu_names[i]);
        WGPUProc fn = lwgpu_from_pointer(sym);
        if (sym == NULL || fn == lwgpu_stubs[i]) continue;
        found++;
        if (overwrite || atomic_load_explicit(&lwgpu_table[i], memory_order_acquire) == NULL) {
            atomic_store_explicit(&lwgpu_table[i], fn, memory_order_release);
        }
    }
    if (found == 0) {
        snprintf(err, err_size, "%s exports none of the %d wgpu* functions (not a Dawn library?)",
                 path, (int) LWGPU_COUNT);
        dlclose(lib);
        return -1;
    }
    err[0] = '\0';
    return 0; /* the library stays loaded: the table points into it */
}

static void lwgpu_autoload(void) {
    const char *path = getenv(LWGPU_PROCS_ENV);
    if (path != NULL && path[0] != '\0') {
        lwgpu_load(path, 0, lwgpu_autoload_error, sizeof lwgpu_autoload_error);
    }
}

static void lwgpu_fail(size_t i) {
    const char *path = getenv(LWGPU_PROCS_ENV);
    fprintf(stderr, "llama_webgpu: %s() was called, but no WebGPU implementation (Dawn) is loaded "
                    "for it (%d of the %d wgpu* functions are).\n", lwgpu_names[i],
            (int) (LWGPU_COUNT - lwgpu_procs_missing()), (int) LWGPU_COUNT);
    if (path != NULL && path[0] != '\0') {
        if (lwgpu_autoload_error[0] != '\0') {
            fprintf(stderr, "  %s=%s was tried: %s\n", LWGPU_PROCS_ENV, path, lwgpu_autoload_error);
        } else {
            fprintf(stderr, "  %s=%s was loaded, but it does not export %s.\n", LWGPU_PROCS_ENV,
                    path, lwgpu_names[i]);
        }
    }
    fprintf(stderr,
            "Fix it in one of two ways:\n"
            "  - from Python: import llama_webgpu first (it fills the table from the wgpudawn "
            "package);\n"
            "  - from C/C++ programs (e.g. llama.cpp's test-backend-ops): set %s to the path of a "
            "libwebgpu_dawn.so.\n",
            LWGPU_PROCS_ENV);
    fflush(stderr);
    abort();
}

#if defined(__GNUC__)
__attribute__((noinline, cold))
#endif
static WGPUProc lwgpu_resolve(size_t i) {
    WGPUProc fn;
    pthread_once(&lwgpu_autoload_once, lwgpu_autoload);
    fn = atomic_load_explicit(&lwgpu_table[i], memory_order_acquire);
    if (fn == NULL) lwgpu_fail(i);
    return fn;
}

static inline WGPUProc lwgpu_get(size_t i) {
    WGPUProc fn = atomic_load_explicit(&lwgpu_table[i], memory_order_acquire);
    return fn != NULL ? fn : lwgpu_resolve(i);
}
"""

PROCS_API = r"""
size_t lwgpu_procs_count(void) { return LWGPU_COUNT; }

const char *lwgpu_procs_name(size_t i) { return i < LWGPU_COUNT ? lwgpu_names[i] : NULL; }

int lwgpu_procs_set(const char *name, void *fn) {
    long i = lwgpu_find(name);
    WGPUProc proc = lwgpu_from_pointer(fn);
    if (i < 0) return -1;
    if (proc != NULL && proc == lwgpu_stubs[i]) return -2;
    atomic_store_explicit(&lwgpu_table[i], proc, memory_order_release);
    return 0;
}

size_t lwgpu_procs_missing(void) {
    size_t i, missing = 0;
    for (i = 0; i < LWGPU_COUNT; i++) {
        if (atomic_load_explicit(&lwgpu_table[i], memory_order_acquire) == NULL) missing++;
    }
    return missing;
}

int lwgpu_procs_load_library(const char *path) {
    return lwgpu_load(path, 1, lwgpu_error, sizeof lwgpu_error);
}

const char *lwgpu_procs_last_error(void) { return lwgpu_error; }
"""


def gen_procs_c(api: Api) -> str:
    fns = sorted(api.functions, key=lambda f: f.name)
    index = {f.name: i for i, f in enumerate(fns)}
    out = [
        f"/* {HEADER_NOTE} */",
        "#define _POSIX_C_SOURCE 200809L",
        '#include "llama_webgpu_procs.h"',
        "/* the wgpu* entry points are exported even where symbols default to hidden */",
        "#pragma GCC visibility push(default)",
        '#include "webgpu/webgpu.h"',
        "#pragma GCC visibility pop",
        "",
    ]
    out += [f"#include <{h}>" for h in ("dlfcn.h", "pthread.h", "stdatomic.h", "stdio.h")]
    out += ["#include <stdlib.h>", "#include <string.h>", ""]
    out += [f"#define LWGPU_COUNT ((size_t) {len(fns)})", ""]
    out.append("static const char *const lwgpu_names[] = {  /* sorted, for bsearch */")
    out += [f'    "{f.name}",' for f in fns]
    out += ["};", "static _Atomic(WGPUProc) lwgpu_table[LWGPU_COUNT];"]
    out.append("static const WGPUProc lwgpu_stubs[LWGPU_COUNT];")
    out += [*PROCS_RUNTIME.strip("\n").splitlines(), ""]
    for f in fns:
        params = ", ".join(p.c_decl() for p in f.params) or "void"
        args = ", ".join(p.name for p in f.params)
        call = f"((WGPUProc{f.name[4:]}) lwgpu_get({index[f.name]}))({args})"
        ret = "" if f.ret == CType("void") else "return "
        out += [f"{f.ret.render()} {f.name}({params}) {{", f"    {ret}{call};", "}"]
    out.append("static const WGPUProc lwgpu_stubs[LWGPU_COUNT] = {")
    out += [f"    (WGPUProc) {f.name}," for f in fns]
    out += ["};"]
    out += PROCS_API.splitlines()
    return "\n".join(out)


# --- Driver -------------------------------------------------------------------------------------


def find_lib_dir() -> Path:
    """wgpudawn's _lib folder, found without importing the package."""
    spec = importlib.util.find_spec("wgpudawn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gen_dawn: the wgpudawn package is not installed (or pass --lib-dir)")
    return Path(next(iter(spec.submodule_search_locations))) / "_lib"


def generate(lib_dir: Path) -> dict[str, str]:
    """Relative output path -> content."""
    api = parse([(lib_dir / name).read_text() for name in CDEF_FILES])
    return {
        "include/webgpu/webgpu.h": gen_c_header(api),
        "include/webgpu/webgpu_cpp.h": CppGen(api).generate(),
        "include/llama_webgpu_procs.h": PROCS_HEADER,
        "llama_webgpu_procs.c": gen_procs_c(api),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, required=True, help="where to write the files")
    parser.add_argument("--lib-dir", type=Path, help="wgpudawn/_lib (default: the installed one)")
    parser.add_argument("-v", "--verbose", action="store_true", help="say what was written")
    args = parser.parse_args(argv)
    lib_dir = args.lib_dir or find_lib_dir()
    missing = [n for n in CDEF_FILES if not (lib_dir / n).is_file()]
    if missing:
        raise SystemExit(f"gen_dawn: {lib_dir} lacks {', '.join(missing)}")
    files = generate(lib_dir)
    changed = [rel for rel, text in files.items() if write_if_changed(args.out_dir / rel, text)]
    if args.verbose:
        print(f"gen_dawn: {len(changed)} of {len(files)} files changed in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
