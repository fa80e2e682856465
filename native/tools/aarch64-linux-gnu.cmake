# Cross-compiles the engine and the tools for arm64 with Debian's g++-aarch64-linux-gnu, to build and
# check the NEON backend from an x86-64 machine; with qemu-user installed the tools also run:
#   cmake -S . -B build-aarch64 -DCMAKE_TOOLCHAIN_FILE=native/tools/aarch64-linux-gnu.cmake -DMOE_ROUTER_TOOLS=ON
#   cmake --build build-aarch64 -j2
#   qemu-aarch64 -L /usr/aarch64-linux-gnu build-aarch64/moe_router_check_cpu 300
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
# No CUDA backend for arm64 from here: where an x86-64 nvcc is on the PATH, AUTO found it and the
# configure failed looking for an arm64 CUDA runtime.
set(MOE_ROUTER_CUDA OFF CACHE STRING "Build the CUDA backend: AUTO, ON or OFF")
