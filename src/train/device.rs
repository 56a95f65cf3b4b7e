//! Where training runs and in which float type: the CUDA probe behind
//! `device = "auto"`, and the casts of mixed precision.
//!
//! `device = "auto"` trains on the first CUDA GPU when kiln was built with
//! the `cuda` feature and a driver, NVRTC and a GPU are there, else on the
//! CPU, and says which; `"cuda"` refuses to fall back. On the GPU the
//! forward and backward passes run in bf16 on a cast copy of the fp32
//! master weights, whose gradients (cast back through the graph) the
//! optimiser applies in fp32 (`optim.precision`); the CPU trains in fp32.

use burn::module::{ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use super::config::TrainDevice;
use crate::error::{Error, Result};

/// Where training runs, as chosen before any data is read.
pub(super) enum Chosen {
    Cpu,
    #[cfg(feature = "cuda")]
    Cuda,
}

/// Why the first CUDA GPU cannot train, or nothing when it can: the
/// driver, NVRTC (burn compiles its kernels at run time), a device, and a
/// small computation on it.
#[cfg(feature = "cuda")]
fn cuda_unavailable() -> Option<String> {
    use cudarc::driver::result;
    // SAFETY: these only try to open the shared libraries by name.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no NVIDIA driver (libcuda) was found".into());
    }
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Some(
            "NVRTC (libnvrtc), which compiles the GPU kernels at run time, was not found".into(),
        );
    }
    if let Err(e) = result::init() {
        return Some(format!("the CUDA driver did not start: {e}"));
    }
    match result::device::get_count() {
        Ok(n) if n > 0 => {}
        Ok(_) => return Some("the CUDA driver sees no GPU".into()),
        Err(e) => return Some(format!("the CUDA driver cannot count GPUs: {e}")),
    }
    type Gpu = burn::backend::Cuda;
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = burn::backend::cuda::CudaDevice::new(0);
        let t = Tensor::<Gpu, 1>::from_floats([1.0, 2.0, 3.0], &device);
        t.sum().into_scalar()
    });
    std::panic::set_hook(hook);
    match probe {
        Ok(6.0) => None,
        Ok(v) => Some(format!("a test sum on the GPU gave {v}, not 6")),
        Err(p) => Some(format!(
            "a test computation on the GPU failed: {}",
            p.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("panic")
        )),
    }
}

/// The device `want` resolves to, and what `auto` fell back from.
pub(super) fn choose(want: TrainDevice) -> Result<(Chosen, Option<String>)> {
    #[cfg(feature = "cuda")]
    let gpu = match want {
        TrainDevice::Cpu => Some("device = \"cpu\"".to_string()),
        _ => cuda_unavailable(),
    };
    #[cfg(not(feature = "cuda"))]
    let gpu = Some("this kiln was built without the `cuda` feature".to_string());
    match (want, gpu) {
        (TrainDevice::Cpu, _) => Ok((Chosen::Cpu, None)),
        (TrainDevice::Cuda, Some(why)) => Err(Error::Config(format!(
            "device = \"cuda\": no GPU to train on: {why} (device = \"auto\" falls back to the CPU)"
        ))),
        (TrainDevice::Auto, Some(why)) => Ok((Chosen::Cpu, Some(why))),
        #[cfg(feature = "cuda")]
        (_, None) => Ok((Chosen::Cuda, None)),
        #[cfg(not(feature = "cuda"))]
        (_, None) => unreachable!("no GPU without the cuda feature"),
    }
}

/// The cast of every float parameter to a type: the compute copy of the
/// master weights, whose gradients flow back to them through the casts.
pub(super) struct CastParams(pub(super) FloatDType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.0), mapper)
    }
}

/// Initialises lazily made parameters, so that copies share their values.
pub(super) struct Materialise;

impl<B: Backend> ModuleMapper<B> for Materialise {}

/// `t` cast to fp32 when `cast` (it was computed in another type).
pub(super) fn in_f32<B: Backend, const D: usize>(t: Tensor<B, D>, cast: bool) -> Tensor<B, D> {
    match cast {
        true => t.cast(FloatDType::F32),
        false => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_device_is_chosen_before_any_data_is_read() {
        let (chosen, why) = choose(TrainDevice::Cpu).unwrap();
        assert!(matches!(chosen, Chosen::Cpu) && why.is_none());
        // Without a GPU, `auto` says why it fell back and `cuda` refuses.
        if let Ok((Chosen::Cpu, Some(why))) = choose(TrainDevice::Auto) {
            let e = choose(TrainDevice::Cuda).err().unwrap().to_string();
            assert!(e.contains("no GPU to train on") && e.contains(&why), "{e}");
        }
    }
}
