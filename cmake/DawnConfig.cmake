# Answers ggml-webgpu's find_package(Dawn): no Dawn is built or linked here. Our generated
# headers and proc table (target llama_webgpu_procs, made in the top-level CMakeLists.txt from
# wgpudawn's declarations) stand in for dawn::webgpu_dawn; the real Dawn is attached at run time.
if(NOT TARGET llama_webgpu_procs)
    set(Dawn_FOUND FALSE)
    set(Dawn_NOT_FOUND_MESSAGE "llama_webgpu_procs is not defined: configure from llama-webgpu's top-level CMakeLists.txt")
    return()
endif()
if(NOT TARGET dawn::webgpu_dawn)
    add_library(dawn::webgpu_dawn INTERFACE IMPORTED)
    target_link_libraries(dawn::webgpu_dawn INTERFACE llama_webgpu_procs)
endif()
set(Dawn_FOUND TRUE)
