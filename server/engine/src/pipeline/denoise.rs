//! The denoising loop both pipelines share: per step one transformer forward over the noisy and
//! the condition tokens (cond and uncond batched in one forward when there is a negative
//! prompt), the true-CFG combine in f32, and the flow-match Euler step; cancellation is checked
//! between steps, progress reported, and each step handed to an observer.

use candle_core::{DType, Tensor};

use crate::pipeline::{check_cancel, Phase, Progress};
use crate::scheduler::FlowMatchEulerScheduler;
use crate::transformer::{cfg, QwenImageTransformer};
use crate::Result;

/// Per-step tensors, handed to an observer (tests compare them with the reference's).
pub struct StepTrace<'a> {
    pub step: usize,
    pub v_cond: &'a Tensor,
    pub v_uncond: Option<&'a Tensor>,
    pub v_guided: &'a Tensor,
    pub latents_after: &'a Tensor,
}

/// What one run denoises, and how.
pub(crate) struct Denoise<'a> {
    pub transformer: &'a QwenImageTransformer,
    /// The packed condition tokens, appended after the noisy ones at every step.
    pub cond_latents: &'a Tensor,
    /// `[1 or 2, S, D]` in the model's dtype: the prompt, then (batched CFG) the negative one.
    pub txt: &'a Tensor,
    pub txt_mask: Option<&'a Tensor>,
    pub img_shapes: &'a [(usize, usize, usize)],
    /// Layered's `additional_t_cond` (is-RGB flags), `None` for edit.
    pub additional_t_cond: Option<&'a Tensor>,
    /// The model's dtype (the latents and the scheduler stay f32).
    pub dtype: DType,
    pub true_cfg_scale: f64,
    /// Rescale the guided velocity to the conditional one's norm.
    pub cfg_normalize: bool,
}

impl Denoise<'_> {
    /// Runs every step of `scheduler` from the packed `latents` and returns the final ones.
    pub(crate) fn run(
        &self,
        scheduler: &mut FlowMatchEulerScheduler,
        mut latents: Tensor,
        progress: &dyn Progress,
        observe: &mut dyn FnMut(StepTrace<'_>),
    ) -> Result<Tensor> {
        let device = latents.device().clone();
        let batch = self.txt.dim(0)?;
        let noisy_tokens = latents.dim(1)?;
        let steps = scheduler.num_steps();
        progress.phase(Phase::Denoising);
        progress.step(0, steps);
        for i in 0..steps {
            check_cancel(progress)?;
            let sigma = Tensor::full(scheduler.model_sigma(i)?, batch, &device)?;
            let input = Tensor::cat(&[&latents, self.cond_latents], 1)?;
            let input = if batch == 2 {
                Tensor::cat(&[&input, &input], 0)?
            } else {
                input
            };
            let out = self.transformer.forward(
                &input.to_dtype(self.dtype)?,
                self.txt,
                self.txt_mask,
                &sigma,
                self.img_shapes,
                self.additional_t_cond,
            )?;
            let out = out.narrow(1, 0, noisy_tokens)?.to_dtype(DType::F32)?;
            let (v_cond, v_uncond, v) = if batch == 2 {
                let (c, u) = cfg::split_cond_uncond(&out)?;
                let v = cfg::combine(&c, &u, self.true_cfg_scale, self.cfg_normalize)?;
                (c, Some(u), v)
            } else {
                (out.clone(), None, out)
            };
            latents = scheduler.step(&latents, &v, i)?;
            observe(StepTrace {
                step: i,
                v_cond: &v_cond,
                v_uncond: v_uncond.as_ref(),
                v_guided: &v,
                latents_after: &latents,
            });
            progress.step(i + 1, steps);
        }
        check_cancel(progress)?;
        Ok(latents)
    }
}
