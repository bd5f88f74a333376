//! How a running pipeline reports progress and learns it should stop. The server's job registry,
//! the CLI's progress bar and tests implement [`Progress`]; cancellation is checked between steps.

/// What a pipeline is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Loading,
    Captioning,
    Encoding,
    Denoising,
    Decoding,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Loading => "loading",
            Phase::Captioning => "captioning",
            Phase::Encoding => "encoding",
            Phase::Denoising => "denoising",
            Phase::Decoding => "decoding",
        }
    }
}

pub trait Progress {
    fn phase(&self, _phase: Phase) {}
    /// `done` of `total` denoising steps are finished.
    fn step(&self, _done: usize, _total: usize) {}
    /// Checked between steps; `true` stops the run with `Error::Cancelled`.
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// Ignores progress and never cancels.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Stops a run between steps when its client asked to cancel.
pub fn check_cancel(progress: &dyn Progress) -> crate::Result<()> {
    if progress.is_cancelled() {
        return Err(crate::Error::Cancelled);
    }
    Ok(())
}
