//! Standard output for the commands: a reader that goes away (`portcullis audit | head -2`)
//! ends the output, as ripgrep treats a broken pipe, not the program: the command finishes
//! what it was doing (delivering announcements, say) and exits as it would have. `println!`
//! panics on a closed pipe instead; the commands print through [`outln!`].

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once standard output was found closed: nothing more is written.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes `args` and a newline to standard output, unless its reader has gone.
pub fn line(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    if let Err(err) = written {
        CLOSED.store(true, Ordering::Relaxed);
        if err.kind() != std::io::ErrorKind::BrokenPipe {
            tracing::warn!(error = %err, "standard output failed; the rest of the output is dropped");
        }
    }
}

/// `println!` that ends the output quietly when standard output is closed.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
