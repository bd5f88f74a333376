//! Streamed CPU offload of a stack of identical blocks (the DiT's 60 transformer blocks, the text
//! encoder's decoder layers).
//!
//! The blocks' weights live in host memory, page-locked when the system allows, each block
//! packed into one buffer. A forward pass walks the stack; while block `i` computes on candle's
//! stream, block `i + 1` is copied to the GPU on a second CUDA stream, so copies overlap compute
//! and at most two streamed blocks occupy VRAM. The first `resident_blocks` stay on the GPU for
//! good (a VRAM budget turns into that count), and the first streamed block of the next pass is
//! uploaded at the end of each pass.
//!
//! Synchronisation is cudarc's event tracking (on once a context has a second stream): the copy
//! records a write event that candle's kernels wait for before reading the weights, and a block's
//! buffer is freed on the copy stream only after the compute stream's last read of it. Memory
//! comes from CUDA's stream-ordered pool: the copy stream frees block `i − 1` before allocating
//! block `i + 1`, so the two buffers are reused.
//!
//! A block is rebuilt from its uploaded buffer by the model's own constructor over a
//! `VarBuilder` of views into that buffer (no copies), so streamed and resident blocks run the
//! same code.

// Without CUDA only the error path of `StreamedBlocks::new` is compiled in.
#![cfg_attr(not(feature = "cuda"), allow(dead_code))]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// How to offload a block stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffloadOptions {
    /// Blocks (from the first) kept on the GPU for good; the rest stream from host memory.
    pub resident_blocks: usize,
    /// Page-locked host memory (asynchronous copies at full PCIe speed); when the system refuses
    /// to pin, ordinary memory is used (copies then block the host thread).
    pub pin_memory: bool,
}

impl Default for OffloadOptions {
    fn default() -> Self {
        Self {
            resident_blocks: 0,
            pin_memory: true,
        }
    }
}

impl OffloadOptions {
    /// How many blocks of `block_bytes` fit in `budget_bytes` after `reserved_bytes` (the
    /// non-block weights and the activations) and the two streaming buffers.
    pub fn resident_for_budget(budget_bytes: u64, reserved_bytes: u64, block_bytes: u64, blocks: usize) -> usize {
        let free = budget_bytes.saturating_sub(reserved_bytes + 2 * block_bytes);
        ((free / block_bytes.max(1)) as usize).min(blocks)
    }
}

/// What an offloaded stack holds, for reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OffloadStats {
    pub blocks: usize,
    pub resident_blocks: usize,
    /// Bytes of one block's weights (the largest).
    pub block_bytes: u64,
    /// Host bytes of the streamed blocks.
    pub host_bytes: u64,
    /// Whether all host buffers are page-locked.
    pub pinned: bool,
    /// Bytes copied to the GPU so far.
    pub uploaded_bytes: u64,
}

/// Builds block `index` from a `VarBuilder` rooted at that block.
pub type BuildBlock<B> = Box<dyn Fn(usize, VarBuilder) -> Result<B> + Send + Sync>;

/// A model's block stack: all on the device, or streamed.
pub enum Blocks<B> {
    OnDevice(Vec<B>),
    Streamed(StreamedBlocks<B>),
}

impl<B> std::fmt::Debug for Blocks<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Blocks::OnDevice(b) => write!(f, "Blocks::OnDevice({} blocks)", b.len()),
            Blocks::Streamed(s) => write!(f, "Blocks::Streamed({:?})", s.stats()),
        }
    }
}

impl<B> Blocks<B> {
    pub fn len(&self) -> usize {
        match self {
            Blocks::OnDevice(b) => b.len(),
            Blocks::Streamed(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on every block in order.
    pub fn for_each(&self, mut f: impl FnMut(&B) -> Result<()>) -> Result<()> {
        match self {
            Blocks::OnDevice(blocks) => blocks.iter().try_for_each(f),
            Blocks::Streamed(s) => s.for_each(&mut f),
        }
    }

    pub fn offload_stats(&self) -> Option<OffloadStats> {
        match self {
            Blocks::OnDevice(_) => None,
            Blocks::Streamed(s) => Some(s.stats()),
        }
    }
}

/// One block's weights in host memory: one buffer, and where each tensor sits in it.
struct HostBlock {
    buffer: HostBuffer,
    tensors: Vec<PackedTensor>,
    /// Elements of the model dtype in the buffer.
    elements: usize,
}

struct PackedTensor {
    name: String,
    shape: Shape,
    /// Offset in elements.
    offset: usize,
}

enum HostBuffer {
    #[cfg(feature = "cuda")]
    Pinned(candle_core::cuda::cudarc::driver::PinnedHostSlice<u8>),
    Pageable(Vec<u8>),
}

impl HostBuffer {
    fn bytes(&self) -> Result<&[u8]> {
        match self {
            #[cfg(feature = "cuda")]
            HostBuffer::Pinned(p) => p
                .as_slice()
                .map_err(|e| candle_core::Error::Msg(format!("pinned buffer: {e}"))),
            HostBuffer::Pageable(v) => Ok(v),
        }
    }

    fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        match self {
            #[cfg(feature = "cuda")]
            HostBuffer::Pinned(p) => p
                .as_mut_slice()
                .map_err(|e| candle_core::Error::Msg(format!("pinned buffer: {e}"))),
            HostBuffer::Pageable(v) => Ok(v),
        }
    }

    fn is_pinned(&self) -> bool {
        match self {
            #[cfg(feature = "cuda")]
            HostBuffer::Pinned(_) => true,
            HostBuffer::Pageable(_) => false,
        }
    }
}

/// A block stack streamed from host memory (see the module docs).
pub struct StreamedBlocks<B> {
    resident: Vec<B>,
    /// Blocks `resident.len()..`, in order.
    host: Vec<HostBlock>,
    build: BuildBlock<B>,
    device: Device,
    dtype: DType,
    #[cfg(feature = "cuda")]
    copy_stream: Arc<candle_core::cuda::cudarc::driver::CudaStream>,
    /// The first streamed block, uploaded at the end of the previous pass.
    prefetched: Mutex<Option<B>>,
    stats: Mutex<OffloadStats>,
}

impl<B> StreamedBlocks<B> {
    /// Reads blocks `0..n` through `source.pp(i)` (weights on any device: a memory-mapped
    /// checkpoint on the CPU, or tensors already on the GPU), packs them into host memory and
    /// keeps the first `options.resident_blocks` on `device` (CUDA). `build` is the block's
    /// constructor; it runs once per block here (to learn its tensors) and once per upload.
    pub fn new(
        source: &VarBuilder,
        n: usize,
        build: BuildBlock<B>,
        device: &Device,
        options: OffloadOptions,
    ) -> Result<Self> {
        Self::new_impl(source, n, build, device, options)
    }

    pub fn len(&self) -> usize {
        self.resident.len() + self.host.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn stats(&self) -> OffloadStats {
        self.stats.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Reads block `index` from `source` through its constructor, recording every tensor, and
    /// packs them into one host buffer.
    fn pack(
        source: &VarBuilder,
        index: usize,
        build: &BuildBlock<B>,
        pin: &(dyn Fn(usize) -> Option<HostBuffer> + Sync),
    ) -> Result<HostBlock> {
        let seen = Arc::new(Mutex::new(Vec::<(String, Tensor)>::new()));
        let recorder = Recorder {
            source: source.pp(index),
            seen: seen.clone(),
        };
        let vb = VarBuilder::from_backend(Box::new(recorder), source.dtype(), source.device().clone());
        drop(build(index, vb)?);
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
        let dtype = source.dtype();
        let mut tensors = Vec::with_capacity(seen.len());
        let mut offset = 0;
        for (name, t) in &seen {
            if t.dtype() != dtype {
                candle_core::bail!(
                    "offload: block {index} tensor {name} is {:?}, the model runs in {dtype:?}",
                    t.dtype()
                );
            }
            if tensors.iter().any(|p: &PackedTensor| &p.name == name) {
                continue;
            }
            tensors.push(PackedTensor {
                name: name.clone(),
                shape: t.shape().clone(),
                offset,
            });
            offset += t.elem_count();
        }
        let elements = offset;
        let size = dtype.size_in_bytes();
        let mut buffer = pin(elements * size).unwrap_or_else(|| HostBuffer::Pageable(vec![0u8; elements * size]));
        {
            let dst = buffer.bytes_mut()?;
            for p in &tensors {
                let t = &seen.iter().find(|(n, _)| n == &p.name).expect("recorded").1;
                let start = p.offset * size;
                copy_tensor_bytes(t, &mut dst[start..start + p.shape.elem_count() * size])?;
            }
        }
        Ok(HostBlock {
            buffer,
            tensors,
            elements,
        })
    }

    /// [`Self::pack`] for blocks `0..n`, on up to [`PACKING_THREADS`] threads, in order.
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    fn pack_all(
        source: &VarBuilder,
        n: usize,
        build: &BuildBlock<B>,
        pin: &(dyn Fn(usize) -> Option<HostBuffer> + Sync),
    ) -> Result<Vec<HostBlock>> {
        let threads = PACKING_THREADS
            .min(std::thread::available_parallelism().map_or(1, |p| p.get()))
            .clamp(1, n.max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Result<HostBlock>>>> = (0..n).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    let packed = Self::pack(source, i, build, pin);
                    let failed = packed.is_err();
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(packed);
                    if failed {
                        // The others stop at their next block.
                        next.store(n, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                });
            }
        });
        let mut blocks = Vec::with_capacity(n);
        for (i, slot) in slots.into_iter().enumerate() {
            match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
                Some(packed) => blocks.push(packed?),
                None => candle_core::bail!("offload: block {i} was not packed (an earlier block failed)"),
            }
        }
        Ok(blocks)
    }

    /// Builds a block from views of a flat device tensor holding its packed weights.
    fn build_from(&self, index: usize, host: &HostBlock, flat: &Tensor) -> Result<B> {
        let mut map = HashMap::with_capacity(host.tensors.len());
        for p in &host.tensors {
            let view = flat
                .narrow(0, p.offset, p.shape.elem_count())?
                .reshape(p.shape.clone())?;
            map.insert(p.name.clone(), view);
        }
        (self.build)(index, VarBuilder::from_tensors(map, self.dtype, &self.device))
    }
}

/// Copies a tensor's elements, row-major, into `dst` (its size in bytes), via the host if needed:
/// straight from the tensor's host storage when it is contiguous there (no intermediate `Vec`).
fn copy_tensor_bytes(t: &Tensor, dst: &mut [u8]) -> Result<()> {
    use candle_core::CpuStorage;
    fn put<T: Copy>(v: &[T], dst: &mut [u8]) {
        // SAFETY: plain-old-data numbers viewed as their bytes, length in bytes.
        let bytes = unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, std::mem::size_of_val(v)) };
        dst.copy_from_slice(bytes);
    }
    let t = t.to_device(&Device::Cpu)?.contiguous()?;
    let dtype = t.dtype();
    let (storage, layout) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(cpu), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("offload: a weight is not contiguous in host memory after copying it there");
    };
    match cpu {
        CpuStorage::BF16(v) => put(&v[start..end], dst),
        CpuStorage::F16(v) => put(&v[start..end], dst),
        CpuStorage::F32(v) => put(&v[start..end], dst),
        _ => candle_core::bail!("offload: weights of dtype {dtype:?} are not supported (bf16, f16 or f32)"),
    }
    Ok(())
}

/// Threads that pack blocks at once: reading, converting and copying into page-locked memory is
/// bound by one core's memory bandwidth and the driver's page locking, not by the disk or the page
/// cache; a few threads run it several times faster while holding only a few blocks in flight.
const PACKING_THREADS: usize = 4;

/// A `VarBuilder` backend that forwards to a real one and remembers what was fetched.
struct Recorder<'a> {
    source: VarBuilder<'a>,
    seen: Arc<Mutex<Vec<(String, Tensor)>>>,
}

impl Recorder<'_> {
    fn record(&self, name: &str, t: &Tensor) {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), t.clone()));
    }
}

impl SimpleBackend for Recorder<'_> {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, _: &Device) -> Result<Tensor> {
        let t = self.source.get_with_hints_dtype(s, name, h, dtype)?;
        self.record(name, &t);
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> Result<Tensor> {
        let t = self.source.get_unchecked_dtype(name, dtype)?;
        self.record(name, &t);
        Ok(t)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.source.contains_tensor(name)
    }
}

#[cfg(not(feature = "cuda"))]
impl<B> StreamedBlocks<B> {
    fn new_impl(_: &VarBuilder, _: usize, _: BuildBlock<B>, _: &Device, _: OffloadOptions) -> Result<Self> {
        candle_core::bail!(
            "cpu_offload streams weights to a CUDA GPU, and this build has no CUDA support (rebuild with `--features cuda`)"
        )
    }

    fn for_each(&self, f: &mut dyn FnMut(&B) -> Result<()>) -> Result<()> {
        self.resident.iter().try_for_each(f)
    }
}

#[cfg(feature = "cuda")]
mod cuda_impl {
    use super::*;
    use candle_core::cuda::cudarc::driver::{result, DevicePtrMut};
    use candle_core::{CudaStorage, Storage};

    fn driver_err(what: &str, e: result::DriverError) -> candle_core::Error {
        candle_core::Error::Msg(format!("offload: {what}: {e:?}"))
    }

    impl<B> StreamedBlocks<B> {
        pub(super) fn new_impl(
            source: &VarBuilder,
            n: usize,
            build: BuildBlock<B>,
            device: &Device,
            options: OffloadOptions,
        ) -> Result<Self> {
            let cuda = match device {
                Device::Cuda(d) => d.clone(),
                _ => candle_core::bail!("cpu_offload streams weights to a CUDA GPU; the model's device is {device:?}"),
            };
            let ctx = cuda.cuda_stream().context().clone();
            // A second stream puts the context in multi-stream mode: cudarc then orders every
            // buffer's uses across streams with events.
            let copy_stream = ctx
                .new_stream()
                .map_err(|e| driver_err("creating the copy stream", e))?;
            let pin = |bytes: usize| -> Option<HostBuffer> {
                if !options.pin_memory {
                    return None;
                }
                // SAFETY: the buffer is filled completely by `pack` before any read.
                match unsafe { ctx.alloc_pinned::<u8>(bytes) } {
                    Ok(p) => Some(HostBuffer::Pinned(p)),
                    Err(e) => {
                        tracing::warn!(
                            "offload: could not pin {bytes} bytes of host memory ({e:?}); using pageable memory"
                        );
                        None
                    }
                }
            };
            let dtype = source.dtype();
            let mut host = Self::pack_all(source, n, &build, &pin)?;
            let block_bytes = host
                .iter()
                .map(|h| (h.elements * dtype.size_in_bytes()) as u64)
                .max()
                .unwrap_or(0);
            let resident_count = options.resident_blocks.min(n);
            let mut me = Self {
                resident: Vec::new(),
                host: Vec::new(),
                build,
                device: device.clone(),
                dtype,
                copy_stream,
                prefetched: Mutex::new(None),
                stats: Mutex::new(OffloadStats::default()),
            };
            let streamed = host.split_off(resident_count);
            for (i, h) in host.iter().enumerate() {
                let flat = me.upload_flat(h)?;
                me.resident.push(me.build_from(i, h, &flat)?);
            }
            // The resident blocks' host buffers are freed below: their copies must be done.
            me.copy_stream
                .synchronize()
                .map_err(|e| driver_err("uploading the resident blocks", e))?;
            me.host = streamed;
            let stats = OffloadStats {
                blocks: n,
                resident_blocks: resident_count,
                block_bytes,
                host_bytes: me
                    .host
                    .iter()
                    .map(|h| (h.elements * dtype.size_in_bytes()) as u64)
                    .sum(),
                pinned: me.host.iter().all(|h| h.buffer.is_pinned()),
                uploaded_bytes: 0,
            };
            *me.stats.lock().unwrap_or_else(|e| e.into_inner()) = stats;
            Ok(me)
        }

        /// Copies a host block into a new device buffer on the copy stream (asynchronous for
        /// pinned memory) and wraps it as a flat tensor of the model dtype.
        fn upload_flat(&self, h: &HostBlock) -> Result<Tensor> {
            use half::{bf16, f16};
            let bytes = h.buffer.bytes()?;
            let storage = match self.dtype {
                DType::BF16 => self.upload_typed::<bf16>(bytes, h.elements)?,
                DType::F16 => self.upload_typed::<f16>(bytes, h.elements)?,
                DType::F32 => self.upload_typed::<f32>(bytes, h.elements)?,
                other => candle_core::bail!("offload: dtype {other:?} is not supported (bf16, f16 or f32)"),
            };
            self.stats.lock().unwrap_or_else(|e| e.into_inner()).uploaded_bytes += bytes.len() as u64;
            Ok(Tensor::from_storage(
                Storage::Cuda(storage),
                h.elements,
                candle_core::op::BackpropOp::none(),
                false,
            ))
        }

        fn upload_typed<T>(&self, bytes: &[u8], elements: usize) -> Result<CudaStorage>
        where
            T: candle_core::cuda::CudaDType + candle_core::cuda::cudarc::driver::DeviceRepr,
        {
            let cuda = self.device.as_cuda_device()?;
            assert_eq!(bytes.len(), elements * std::mem::size_of::<T>(), "host block size");
            // SAFETY: the copy below overwrites the whole allocation before any use.
            let mut dst =
                unsafe { self.copy_stream.alloc::<T>(elements) }.map_err(|e| driver_err("allocating a block", e))?;
            {
                // Recording the write event on drop makes later readers on other streams wait.
                let (ptr, _record_write) = dst.device_ptr_mut(&self.copy_stream);
                // SAFETY: `ptr` holds `bytes.len()` bytes; the host buffer outlives the copy (it
                // is owned by `self` and never written after packing).
                unsafe { result::memcpy_htod_async(ptr, bytes, self.copy_stream.cu_stream()) }
                    .map_err(|e| driver_err("copying a block to the GPU", e))?;
            }
            Ok(CudaStorage::wrap_cuda_slice(dst, cuda.clone()))
        }

        fn upload(&self, j: usize) -> Result<B> {
            let h = &self.host[j];
            let flat = self.upload_flat(h)?;
            self.build_from(self.resident.len() + j, h, &flat)
        }

        /// Waits for in-flight copies (their host buffers are about to be freed).
        pub(super) fn finish_copies(&self) {
            if let Err(e) = self.copy_stream.synchronize() {
                tracing::warn!("offload: waiting for the copy stream: {e:?}");
            }
        }

        pub(super) fn for_each(&self, f: &mut dyn FnMut(&B) -> Result<()>) -> Result<()> {
            let prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner()).take();
            let mut next = match prefetched {
                Some(b) => Some(b),
                None if !self.host.is_empty() => Some(self.upload(0)?),
                None => None,
            };
            for block in &self.resident {
                f(block)?;
            }
            for j in 0..self.host.len() {
                let current = next.take().expect("the next block is uploaded one ahead");
                if j + 1 < self.host.len() {
                    next = Some(self.upload(j + 1)?);
                }
                f(&current)?;
                // Dropped here: its buffer goes back to the pool once the compute stream is done
                // with it, in time for block j + 2.
            }
            if !self.host.is_empty() {
                *self.prefetched.lock().unwrap_or_else(|e| e.into_inner()) = Some(self.upload(0)?);
            }
            Ok(())
        }
    }
}

impl<B> Drop for StreamedBlocks<B> {
    fn drop(&mut self) {
        #[cfg(feature = "cuda")]
        self.finish_copies();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_turns_into_resident_blocks() {
        let gb = 1u64 << 30;
        // 20 GiB budget, 4 GiB reserved, 0.68 GB blocks: (20 − 4 − 1.36) / 0.68.
        let block = 680_000_000u64;
        assert_eq!(OffloadOptions::resident_for_budget(20 * gb, 4 * gb, block, 60), 23);
        assert_eq!(OffloadOptions::resident_for_budget(2 * gb, 4 * gb, block, 60), 0);
        assert_eq!(OffloadOptions::resident_for_budget(200 * gb, 0, block, 60), 60);
    }

    #[test]
    fn offload_without_a_gpu_is_a_clear_error() {
        let vb = crate::gpu::RandomWeights::var_builder(DType::F32, &Device::Cpu);
        let build: BuildBlock<Tensor> = Box::new(|_, vb| vb.get((2, 2), "w"));
        let err = StreamedBlocks::new(&vb, 2, build, &Device::Cpu, OffloadOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("CUDA"), "{err}");
    }
}
