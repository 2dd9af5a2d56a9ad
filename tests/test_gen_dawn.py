"""tools/gen_dawn.py: the generated WebGPU headers and proc table, checked against wgpudawn.

These tests need gcc/g++ and the wgpudawn package, not the project build. The one marked
`webgpu` runs a compute shader through the generated C++ API and needs an adapter (lavapipe).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, need

GEN = ROOT / "tools" / "gen_dawn.py"
LLAMA = ROOT / "vendor" / "llama.cpp"
FILES = (
    "include/webgpu/webgpu.h",
    "include/webgpu/webgpu_cpp.h",
    "include/llama_webgpu_procs.h",
    "llama_webgpu_procs.c",
)
PROCS_CDEF = """
size_t lwgpu_procs_count(void);
const char *lwgpu_procs_name(size_t i);
int lwgpu_procs_set(const char *name, void *fn);
size_t lwgpu_procs_missing(void);
int lwgpu_procs_load_library(const char *path);
const char *lwgpu_procs_last_error(void);
void *wgpuCreateInstance(void *descriptor);
void wgpuInstanceRelease(void *instance);
uint32_t wgpuHasInstanceFeature(int feature);
"""

dawn = pytest.importorskip("wgpudawn._lib", reason="wgpudawn is not installed")
cffi = pytest.importorskip("cffi")
if not (shutil.which("gcc") and shutil.which("g++")):
    pytest.skip("gcc and g++ are needed", allow_module_level=True)


def run(*cmd: str | Path, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def compile_ok(*cmd: str | Path) -> None:
    result = run(*cmd)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "warning" not in result.stderr, result.stderr[-4000:]


def wgpudawn_function_names() -> list[str]:
    lib_dir = Path(dawn.__file__).parent
    text = "".join(
        (lib_dir / n).read_text() for n in ("webgpu_cdef.h", "webgpu_native_extra_cdef.h")
    )
    text = re.sub(r'^extern "Python".*$', "", text, flags=re.M)
    return sorted(set(re.findall(r"\b(wgpu[A-Z]\w*)\s*\(", text)))


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dawn")
    result = run(sys.executable, GEN, "--out-dir", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""  # quiet on success
    return out


@pytest.fixture(scope="module")
def procs_lib(out: Path, tmp_path_factory) -> Path:
    """The proc table as a shared library, built with the strictest C flags."""
    lib = tmp_path_factory.mktemp("procs") / "libprocs.so"
    compile_ok(
        "gcc", "-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O1", "-fPIC", "-shared",
        f"-I{out}/include", out / "llama_webgpu_procs.c", "-o", lib, "-lpthread", "-ldl",
    )  # fmt: skip
    return lib


def open_procs(lib: Path):
    ffi = cffi.FFI()
    ffi.cdef(PROCS_CDEF)
    return ffi, ffi.dlopen(str(lib))


def test_generator_writes_all_files_and_rewrites_only_changed_ones(out: Path, tmp_path: Path):
    shutil.copytree(out, tmp_path, dirs_exist_ok=True)
    stamps = {f: (tmp_path / f).stat().st_mtime_ns for f in FILES}
    (tmp_path / FILES[0]).write_text("stale")
    result = run(sys.executable, GEN, "--out-dir", tmp_path, "-v")
    assert result.returncode == 0, result.stderr
    assert "1 of 4 files changed" in result.stdout
    assert (tmp_path / FILES[0]).read_text() == (out / FILES[0]).read_text()
    for f in FILES[1:]:
        assert (tmp_path / f).stat().st_mtime_ns == stamps[f], f"{f} was rewritten unchanged"


def test_generator_reads_declarations_from_lib_dir_and_rejects_a_wrong_one(tmp_path: Path):
    lib_dir = Path(dawn.__file__).parent
    assert (
        run(sys.executable, GEN, "--out-dir", tmp_path / "a", "--lib-dir", lib_dir).returncode == 0
    )
    result = run(sys.executable, GEN, "--out-dir", tmp_path / "b", "--lib-dir", tmp_path)
    assert result.returncode != 0
    assert "webgpu_cdef.h" in result.stderr


def test_c_header_compiles_strictly_and_matches_wgpudawn_values_and_layouts(out: Path, tmp_path):
    ffi, lib = dawn.ffi, dawn.lib
    layout, values = [], []
    for name in dir(lib):  # enum values (native extras included), bitflags and WGPU_* macros
        value = getattr(lib, name)
        if name.startswith("WGPU") and isinstance(value, int):
            values.append(f'    bad += check((unsigned long long) ({name}), {value}ULL, "{name}");')
    structs = [t for t in ffi.list_types()[0] if ffi.typeof(t).kind == "struct"]
    for s in structs:
        t = ffi.typeof(s)
        layout.append(f'_Static_assert(sizeof({s}) == {ffi.sizeof(t)}, "{s}");')
        layout.append(f'_Static_assert(_Alignof({s}) == {ffi.alignof(t)}, "{s}");')
        for field, _ in t.fields:
            offset = ffi.offsetof(t, field)
            layout.append(f'_Static_assert(offsetof({s}, {field}) == {offset}, "{s}.{field}");')
    assert len(structs) > 100 and len(values) > 500
    assert any("WGPUSType_DawnTogglesDescriptor" in v for v in values)
    assert any("WGPUFeatureName_ImplicitDeviceSynchronization" in v for v in values)
    src = tmp_path / "check.c"
    src.write_text(
        "#include <stdio.h>\n#include <webgpu/webgpu.h>\n"
        + "\n".join(layout)
        + "\nstatic int check(unsigned long long got, unsigned long long want, const char *n) {\n"
        + '    if (got != want) printf("%s: %llu, wgpudawn has %llu\\n", n, got, want);\n'
        + "    return got != want;\n}\nint main(void) {\n    int bad = 0;\n"
        + "\n".join(values)
        + "\n    return bad;\n}\n"
    )
    exe = tmp_path / "check"
    compile_ok(
        "gcc", "-std=c11", "-Wall", "-Wextra", "-Wpedantic", "-Werror", f"-I{out}/include",
        src, "-o", exe,
    )  # fmt: skip
    result = run(exe)
    assert result.returncode == 0, result.stdout


CPP_USE = r"""
#include <webgpu/webgpu_cpp.h>
#include <string>
#include <type_traits>
static_assert(static_cast<uint32_t>(wgpu::FeatureName::ImplicitDeviceSynchronization) == 0x50004);
static_assert(static_cast<uint32_t>(wgpu::SType::DawnTogglesDescriptor) == 0x5000A);
static_assert(std::is_base_of_v<wgpu::ChainedStruct, wgpu::DawnTogglesDescriptor>);
static_assert(
    std::is_base_of_v<wgpu::ChainedStructOut, wgpu::AdapterPropertiesSubgroupMatrixConfigs>);
static_assert(!std::is_copy_constructible_v<wgpu::AdapterInfo>);
static_assert(std::is_nothrow_move_constructible_v<wgpu::SupportedFeatures>);

int main() {  // member defaults of the WebGPU API; no handle is used, so no Dawn is needed
    int bad = 0;
    bad += wgpu::BindGroupEntry{}.size != WGPU_WHOLE_SIZE;
    bad += wgpu::RequestAdapterOptions{}.featureLevel != wgpu::FeatureLevel::Core;
    bad += wgpu::Limits{}.maxBufferSize != WGPU_LIMIT_U64_UNDEFINED;
    bad += wgpu::Limits{}.maxBindGroups != WGPU_LIMIT_U32_UNDEFINED;
    bad += wgpu::PassTimestampWrites{}.endOfPassWriteIndex != WGPU_QUERY_SET_INDEX_UNDEFINED;
    bad += wgpu::BindGroupLayoutEntry{}.buffer.type != wgpu::BufferBindingType::BindingNotUsed;
    bad += wgpu::BufferBindingLayout{}.type != wgpu::BufferBindingType::Undefined;
    bad += !wgpu::StringView{}.IsUndefined();
    bad += wgpu::ShaderSourceWGSL{}.sType != wgpu::SType::ShaderSourceWGSL;
    bad += wgpu::DawnTogglesDescriptor{}.sType != wgpu::SType::DawnTogglesDescriptor;
    bad += std::string_view(wgpu::StringView("abc", 2)) != "ab";
    return bad;
}

int uses(wgpu::Instance instance, wgpu::Buffer buffer, wgpu::Queue queue,
         wgpu::ComputePassEncoder pass) {
    wgpu::BufferUsage usage = wgpu::BufferUsage::MapRead | wgpu::BufferUsage::CopyDst;
    usage |= wgpu::BufferUsage::Storage;
    int n = (usage & wgpu::BufferUsage::Storage) ? 1 : 0;
    wgpu::StringView view = "label";
    std::string text(view);
    wgpu::ShaderSourceWGSL wgsl;
    wgsl.code = text;
    wgpu::ShaderModuleDescriptor desc;
    desc.nextInChain = &wgsl;
    wgpu::AdapterInfo info{};
    wgpu::AdapterPropertiesSubgroupMatrixConfigs configs{};
    info.nextInChain = &configs;
    wgpu::AdapterInfo moved = std::move(info);
    wgpu::DeviceDescriptor dd;
    dd.SetDeviceLostCallback(wgpu::CallbackMode::AllowSpontaneous,
        [&n](const wgpu::Device&, wgpu::DeviceLostReason, wgpu::StringView) { n++; });
    dd.SetUncapturedErrorCallback([](const wgpu::Device&, wgpu::ErrorType, wgpu::StringView) {});
    wgpu::Future f = buffer.MapAsync(wgpu::MapMode::Read, 0, 4,
        wgpu::CallbackMode::AllowSpontaneous,
        [&n](wgpu::MapAsyncStatus, wgpu::StringView) { n++; });
    instance.WaitAny(f, UINT64_MAX);
    instance.WaitAny(queue.OnSubmittedWorkDone(wgpu::CallbackMode::WaitAnyOnly,
        [](wgpu::QueueWorkDoneStatus, wgpu::StringView, int* p) { (*p)++; }, &n), 0);
    pass.SetBindGroup(0, nullptr);
    pass.DispatchWorkgroups(4);
    const void* range = buffer.GetConstMappedRange();
    wgpu::Buffer copy = buffer;
    bool same = copy == buffer && nullptr != copy;
    pass = nullptr;
    return n + (range != nullptr) + same + (pass ? 1 : 0) + (int) moved.vendorID;
}
"""


def test_cpp_header_compiles_cleanly_with_layout_asserts_for_every_struct(out: Path, tmp_path):
    header = (out / "include/webgpu/webgpu_cpp.h").read_text()
    c_structs = dict(
        re.findall(r"^struct (WGPU\w+) \{(.*?)\};", (out / FILES[0]).read_text(), re.M | re.S)
    )
    for prelude in ("WGPUChainedStruct", "WGPUStringView"):  # hand-written, checked apart
        del c_structs[prelude]
    checked = set(re.findall(r'"sizeof mismatch for (\w+)"', header))
    assert set(c_structs) <= {"WGPU" + s for s in checked}
    # one offsetof check per member; a chain is two (nextInChain and sType)
    members = sum(body.count(";") + body.count(" chain;") for body in c_structs.values())
    assert header.count('"offsetof mismatch for') == members
    src, exe = tmp_path / "use.cpp", tmp_path / "use"
    src.write_text(CPP_USE)
    compile_ok("gcc", "-c", f"-I{out}/include", out / FILES[3], "-o", tmp_path / "procs.o")
    compile_ok(
        "g++", "-std=c++20", "-Wall", "-Wextra", "-Werror", f"-I{out}/include",
        src, tmp_path / "procs.o", "-o", exe,
    )  # fmt: skip
    assert run(exe).returncode == 0, "a member default differs"


def test_cpp_lambda_with_wrong_signature_is_rejected_with_a_clear_error(out: Path, tmp_path):
    src = tmp_path / "bad.cpp"
    src.write_text(
        "#include <webgpu/webgpu_cpp.h>\n"
        "void f(wgpu::Queue q) { q.OnSubmittedWorkDone(wgpu::CallbackMode::AllowSpontaneous,"
        " [](int) {}); }\n"
    )
    result = run("g++", "-std=c++20", "-fsyntax-only", f"-I{out}/include", src)
    assert result.returncode != 0
    assert "the callback must be callable as void(QueueWorkDoneStatus, StringView)" in result.stderr


def test_proc_table_fills_from_wgpudawn_and_calls_reach_dawn(procs_lib: Path, capsys):
    ffi, procs = open_procs(procs_lib)
    names = [
        ffi.string(procs.lwgpu_procs_name(i)).decode() for i in range(procs.lwgpu_procs_count())
    ]
    assert names == wgpudawn_function_names()
    assert procs.lwgpu_procs_name(len(names)) == ffi.NULL
    assert procs.lwgpu_procs_missing() == len(names)
    provided = []
    for name in names:
        try:
            fn = dawn.ffi.addressof(dawn.lib, name)
        except (AttributeError, dawn.ffi.error):
            continue
        address = ffi.cast("void *", int(dawn.ffi.cast("uintptr_t", fn)))
        assert procs.lwgpu_procs_set(name.encode(), address) == 0
        provided.append(name)
    with capsys.disabled():
        print(f"\n  proc table: {len(names)} names, wgpudawn provides {len(provided)}")
    assert len(provided) >= len(names) - 1
    assert procs.lwgpu_procs_missing() == len(names) - len(provided)
    assert procs.lwgpu_procs_set(b"wgpuNoSuchFunction", ffi.NULL) == -1
    assert (
        procs.lwgpu_procs_set(b"wgpuCreateInstance", ffi.cast("void *", procs.wgpuCreateInstance))
        == -2
    )
    # calls go through the table into Dawn
    assert procs.wgpuHasInstanceFeature(dawn.lib.WGPUInstanceFeatureName_TimedWaitAny) == 1
    instance = procs.wgpuCreateInstance(ffi.NULL)
    assert instance != ffi.NULL
    procs.wgpuInstanceRelease(instance)


def test_load_library_explains_what_is_wrong(procs_lib: Path, tmp_path: Path):
    ffi, procs = open_procs(procs_lib)
    bogus = tmp_path / "libwebgpu_dawn.so"
    bogus.write_bytes(b"not an ELF file")
    assert procs.lwgpu_procs_load_library(str(bogus).encode()) == -1
    assert str(bogus) in ffi.string(procs.lwgpu_procs_last_error()).decode()
    assert procs.lwgpu_procs_load_library(b"libm.so.6") == -1
    assert "exports none of the" in ffi.string(procs.lwgpu_procs_last_error()).decode()


CALL_ONE = """
import sys, cffi
ffi = cffi.FFI()
ffi.cdef('''{cdef}''')
procs = ffi.dlopen(sys.argv[1])
print(procs.{call}, procs.lwgpu_procs_missing(), flush=True)
"""


def call_in_subprocess(lib: Path, call: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LLAMA_WEBGPU_DAWN_LIB"} | env
    script = CALL_ONE.format(cdef=PROCS_CDEF, call=call)
    return run(sys.executable, "-c", script, lib, env=environ, timeout=60)


def test_calling_an_empty_entry_aborts_with_a_message_naming_both_fixes(procs_lib: Path):
    result = call_in_subprocess(procs_lib, "wgpuCreateInstance(ffi.NULL)")
    assert result.returncode == -signal.SIGABRT, (result.returncode, result.stderr)
    assert "wgpuCreateInstance() was called" in result.stderr
    assert "import llama_webgpu" in result.stderr
    assert "set LLAMA_WEBGPU_DAWN_LIB to the path of a libwebgpu_dawn.so" in result.stderr


@pytest.fixture(scope="module")
def fake_dawn(tmp_path_factory) -> Path:
    """A 'Dawn' exporting only wgpuHasInstanceFeature, answering 40 + feature."""
    src = tmp_path_factory.mktemp("fake") / "fake.c"
    src.write_text("unsigned wgpuHasInstanceFeature(int feature) { return 40u + feature; }\n")
    lib = src.with_name("libfake_dawn.so")
    compile_ok("gcc", "-shared", "-fPIC", src, "-o", lib)
    return lib


def test_empty_entry_is_filled_once_from_the_environment_library(procs_lib, fake_dawn):
    result = call_in_subprocess(
        procs_lib, "wgpuHasInstanceFeature(2)", LLAMA_WEBGPU_DAWN_LIB=str(fake_dawn)
    )
    assert result.returncode == 0, result.stderr
    count = len(wgpudawn_function_names())
    assert result.stdout.split() == ["42", str(count - 1)]


def test_function_missing_from_the_environment_library_aborts_naming_it(procs_lib, fake_dawn):
    result = call_in_subprocess(
        procs_lib, "wgpuCreateInstance(ffi.NULL)", LLAMA_WEBGPU_DAWN_LIB=str(fake_dawn)
    )
    assert result.returncode == -signal.SIGABRT, (result.returncode, result.stderr)
    assert f"LLAMA_WEBGPU_DAWN_LIB={fake_dawn} was loaded" in result.stderr
    assert "does not export wgpuCreateInstance" in result.stderr


def test_consumer_ggml_webgpu_compiles_without_errors_or_warnings(out: Path, tmp_path: Path):
    webgpu = LLAMA / "ggml" / "src" / "ggml-webgpu"
    need((webgpu / "ggml-webgpu.cpp").exists(), "vendor/llama.cpp is not unpacked")
    embed = run(
        sys.executable, webgpu / "wgsl-shaders" / "embed_wgsl.py",
        "--input_dir", webgpu / "wgsl-shaders", "--output_file", tmp_path / "ggml-wgsl-shaders.hpp",
    )  # fmt: skip
    assert embed.returncode == 0, embed.stderr
    compile_ok(
        "g++", "-std=c++20", "-Wall", "-Wextra", "-fsyntax-only",
        "-DGGML_BACKEND_BUILD", "-DGGML_BACKEND_SHARED", f"-I{out}/include",
        f"-I{LLAMA}/ggml/include", f"-I{LLAMA}/ggml/src", f"-I{tmp_path}",
        webgpu / "ggml-webgpu.cpp",
    )  # fmt: skip


SMOKE_CPP = r"""
#include <webgpu/webgpu_cpp.h>
#include <cstdio>
#include <string>
#include <vector>

// 0: doubled 256 floats on the GPU; 10: no adapter; other: failure. Writes the adapter name.
extern "C" int lw_smoke(char* name, size_t name_size) {
    std::vector<wgpu::InstanceFeatureName> features = {wgpu::InstanceFeatureName::TimedWaitAny};
    wgpu::InstanceDescriptor idesc{};
    idesc.requiredFeatures = features.data();
    idesc.requiredFeatureCount = features.size();
    wgpu::Instance instance = wgpu::CreateInstance(&idesc);
    if (!instance) return 1;
    wgpu::Adapter adapter;
    wgpu::RequestAdapterOptions options = {};
    instance.WaitAny(instance.RequestAdapter(&options, wgpu::CallbackMode::AllowSpontaneous,
        [&](wgpu::RequestAdapterStatus status, wgpu::Adapter a, wgpu::StringView) {
            if (status == wgpu::RequestAdapterStatus::Success) adapter = std::move(a);
        }), UINT64_MAX);
    if (adapter == nullptr) return 10;
    wgpu::AdapterInfo info{};
    adapter.GetInfo(&info);
    std::snprintf(name, name_size, "%s", std::string(info.device).c_str());
    if (!adapter.HasFeature(wgpu::FeatureName::ShaderF16)) return 11;
    std::vector<wgpu::FeatureName> required = {wgpu::FeatureName::ShaderF16};
    wgpu::DeviceDescriptor ddesc;
    ddesc.requiredFeatures = required.data();
    ddesc.requiredFeatureCount = required.size();
    ddesc.SetUncapturedErrorCallback([](const wgpu::Device&, wgpu::ErrorType, wgpu::StringView m) {
        std::fprintf(stderr, "uncaptured error: %s\n", std::string(m).c_str());
    });
    wgpu::Device device;
    instance.WaitAny(adapter.RequestDevice(&ddesc, wgpu::CallbackMode::AllowSpontaneous,
        [&](wgpu::RequestDeviceStatus status, wgpu::Device d, wgpu::StringView) {
            if (status == wgpu::RequestDeviceStatus::Success) device = std::move(d);
        }), UINT64_MAX);
    if (!device) return 2;
    wgpu::ShaderSourceWGSL wgsl;
    wgsl.code = "enable f16;\n"
        "@group(0) @binding(0) var<storage, read_write> data: array<f32>;\n"
        "@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) id: vec3<u32>) {\n"
        "  data[id.x] = f32(f16(data[id.x]) * 2.0h);\n}\n";
    wgpu::ShaderModuleDescriptor smdesc;
    smdesc.nextInChain = &wgsl;
    wgpu::ComputePipelineDescriptor pdesc;
    pdesc.compute.module = device.CreateShaderModule(&smdesc);
    pdesc.compute.entryPoint = "main";
    wgpu::ComputePipeline pipeline = device.CreateComputePipeline(&pdesc);
    const size_t n = 256, size = n * sizeof(float);
    std::vector<float> input(n);
    for (size_t i = 0; i < n; i++) input[i] = float(i);
    wgpu::BufferDescriptor bdesc;
    bdesc.size = size;
    bdesc.usage = wgpu::BufferUsage::Storage | wgpu::BufferUsage::CopySrc;
    bdesc.usage |= wgpu::BufferUsage::CopyDst;
    wgpu::Buffer buffer = device.CreateBuffer(&bdesc);
    bdesc.usage = wgpu::BufferUsage::MapRead | wgpu::BufferUsage::CopyDst;
    wgpu::Buffer staging = device.CreateBuffer(&bdesc);
    wgpu::Queue queue = device.GetQueue();
    queue.WriteBuffer(buffer, 0, input.data(), size);
    wgpu::BindGroupEntry entry = {};
    entry.buffer = buffer;
    wgpu::BindGroupDescriptor bgdesc;
    bgdesc.layout = pipeline.GetBindGroupLayout(0);
    bgdesc.entryCount = 1;
    bgdesc.entries = &entry;
    wgpu::BindGroup group = device.CreateBindGroup(&bgdesc);
    wgpu::CommandEncoder encoder = device.CreateCommandEncoder();
    wgpu::ComputePassEncoder pass = encoder.BeginComputePass();
    pass.SetPipeline(pipeline);
    pass.SetBindGroup(0, group);
    pass.DispatchWorkgroups(n / 64);
    pass.End();
    encoder.CopyBufferToBuffer(buffer, 0, staging, 0, size);
    wgpu::CommandBuffer commands = encoder.Finish();
    queue.Submit(1, &commands);
    wgpu::MapAsyncStatus mapped = wgpu::MapAsyncStatus::Error;
    wgpu::WaitStatus wait = instance.WaitAny(staging.MapAsync(wgpu::MapMode::Read, 0, size,
        wgpu::CallbackMode::AllowSpontaneous,
        [&mapped](wgpu::MapAsyncStatus s, wgpu::StringView) { mapped = s; }), UINT64_MAX);
    if (wait != wgpu::WaitStatus::Success || mapped != wgpu::MapAsyncStatus::Success) return 3;
    const float* result = static_cast<const float*>(staging.GetConstMappedRange());
    for (size_t i = 0; i < n; i++) if (result[i] != 2.0f * input[i]) return 4;
    staging.Unmap();
    return 0;
}
"""

SMOKE_PY = """
import json, sys, cffi
from wgpudawn._lib import ffi as dffi, lib as dlib
ffi = cffi.FFI()
ffi.cdef('''{cdef} int lw_smoke(char *name, size_t name_size);''')
lib = ffi.dlopen(sys.argv[1])
for i in range(lib.lwgpu_procs_count()):
    name = ffi.string(lib.lwgpu_procs_name(i))
    if hasattr(dlib, name.decode()):
        fn = dffi.addressof(dlib, name.decode())
        lib.lwgpu_procs_set(name, ffi.cast("void *", int(dffi.cast("uintptr_t", fn))))
buf = ffi.new("char[256]")
code = lib.lw_smoke(buf, 256)
print(json.dumps({{"code": code, "device": ffi.string(buf).decode()}}))
"""


@pytest.mark.webgpu
def test_cpp_api_doubles_a_buffer_on_the_adapter(out: Path, tmp_path: Path):
    lib = tmp_path / "libsmoke.so"
    (tmp_path / "smoke.cpp").write_text(SMOKE_CPP)
    compile_ok(
        "gcc", "-std=c11", "-fPIC", "-c", f"-I{out}/include", out / FILES[3], "-o", tmp_path / "p.o"
    )
    compile_ok(
        "g++", "-std=c++20", "-Wall", "-Wextra", "-fPIC", "-shared", f"-I{out}/include",
        tmp_path / "smoke.cpp", tmp_path / "p.o", "-o", lib,
    )  # fmt: skip
    env = {"XDG_RUNTIME_DIR": str(tmp_path)} | dict(os.environ)
    env.pop("LLAMA_WEBGPU_DAWN_LIB", None)
    script = textwrap.dedent(SMOKE_PY).format(cdef=PROCS_CDEF)
    result = run(sys.executable, "-c", script, lib, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-4000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    need(answer["code"] != 10, "Dawn found no WebGPU adapter")
    assert answer["code"] == 0, answer
    assert answer["device"]
