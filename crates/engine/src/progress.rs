//! Progress of long operations over many groups (`refresh`, `adopt`, `guard baseline`), for an
//! interface that shows it: the CLI draws it on a terminal. The engine only counts; how (and
//! whether) it is shown is the interface's business.

use std::sync::Arc;

use crate::Engine;

/// Told how far an operation over many groups has got.
pub trait Progress: Send + Sync {
    /// `done` of `total` steps of `what` (e.g. "security groups changed") are finished.
    fn update(&self, what: &'static str, done: usize, total: usize);

    /// The operation ended; whatever was drawn may be cleared.
    fn finish(&self);
}

impl Engine {
    /// Tells `progress` how operations over many groups advance.
    pub fn with_progress(mut self, progress: Arc<dyn Progress>) -> Engine {
        self.progress = Some(progress);
        self
    }

    /// Reports `done` of `total` steps of `what`, when someone listens.
    pub(crate) fn progress(&self, what: &'static str, done: usize, total: usize) {
        if let Some(p) = &self.progress {
            p.update(what, done, total);
        }
    }

    /// Ends what `progress` drew.
    pub(crate) fn progress_done(&self) {
        if let Some(p) = &self.progress {
            p.finish();
        }
    }
}
