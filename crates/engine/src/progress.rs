//! Progress of long operations over many groups (`refresh`, `adopt`, `guard baseline`), for an
//! interface that shows it: the CLI draws it on a terminal. The engine only counts; how (and
//! whether) it is shown is the interface's business.

/// Told how far an operation over many groups has got.
pub trait Progress: Send + Sync {
    /// `done` of `total` steps of `what` (e.g. "security groups changed") are finished.
    fn update(&self, what: &'static str, done: usize, total: usize);

    /// The operation ended; whatever was drawn may be cleared.
    fn finish(&self);
}
