# Source this on the lent GPU machine (see bench/RESULTS.md): unpacks the Vulkan loader and the
# xz-compressed Deno carried in the ignored folder .gl/, and points Vulkan at the NVIDIA driver.
#   . bench/gpu_env.sh && deno task bench --large
for f in .gl/*.deb; do dpkg -x "$f" /; done
ldconfig
[ -x /tmp/deno ] || { xz -dc .gl/deno.xz >/tmp/deno && chmod +x /tmp/deno; }
export PATH=/tmp:$PATH NO_COLOR=1 DENO_NO_UPDATE_CHECK=1
if [ -f /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json ]; then
  export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
fi
