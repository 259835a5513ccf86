# cuDNN's fused attention for dense prefill (src/backends/cuda/attention_cudnn.cpp), shared by the main build and
# the GPU machine's standalone builds (bench/gpu, bench/gpu/engine).
#
# Needs the cuDNN frontend headers (header-only C++) and cudnn.h at build time and nothing at link time: the
# frontend opens libcudnn.so.9 at run time, and without it the engine keeps its own kernel.
# scripts/fetch_cudnn_headers.sh puts both under third_party/cudnn/include (PyPI's nvidia-cudnn-frontend and
# nvidia-cudnn-cu13 wheels, pinned); a cudnn.h of the system is used when that folder has none. Without the
# headers the file builds a stub that says so (cudnn_attention_status()).
function(hs_add_cudnn_attention target root)
  set(src ${root}/src/backends/cuda/attention_cudnn.cpp)
  target_sources(${target} PRIVATE ${src})
  set(inc "${root}/third_party/cudnn/include")
  find_path(HS_CUDNN_FE_DIR cudnn_frontend.h PATHS "${inc}" NO_DEFAULT_PATH)
  find_path(HS_CUDNN_DIR cudnn.h PATHS "${inc}" NO_DEFAULT_PATH)
  find_path(HS_CUDNN_DIR cudnn.h PATHS /usr/include/x86_64-linux-gnu /usr/include)
  if(HS_CUDNN_FE_DIR AND HS_CUDNN_DIR)
    message(STATUS "cuDNN attention: frontend in ${HS_CUDNN_FE_DIR}, cudnn.h in ${HS_CUDNN_DIR}")
    # -isystem: the third-party headers' warnings are not ours.
    set_source_files_properties(${src} PROPERTIES
      COMPILE_OPTIONS "-isystem;${HS_CUDNN_FE_DIR};-isystem;${HS_CUDNN_DIR}"
      COMPILE_DEFINITIONS "HIPSERVE_HAVE_CUDNN=1;NV_CUDNN_FRONTEND_USE_DYNAMIC_LOADING")
    target_link_libraries(${target} PUBLIC ${CMAKE_DL_LIBS})
  else()
    message(STATUS "cuDNN attention: headers not found (run scripts/fetch_cudnn_headers.sh); building without it")
  endif()
endfunction()
