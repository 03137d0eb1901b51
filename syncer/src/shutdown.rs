//! The one shutdown signal of the process: the supervisor triggers it, every reader thread
//! polls it and every task awaits it (mini-redis's shutdown, passed down as a value). A leaf.

use tokio_util::sync::CancellationToken;

/// A shutdown signal shared by threads and tasks; clones observe the same signal.
#[derive(Debug, Clone, Default)]
pub struct Shutdown(CancellationToken);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// A signal already given (`syncer sync`: drain from the start).
    pub fn triggered() -> Shutdown {
        let s = Shutdown::new();
        s.trigger();
        s
    }

    /// Asks everything holding a clone to stop (idempotent).
    pub fn trigger(&self) {
        self.0.cancel();
    }

    /// For threads: whether shutdown was asked for.
    pub fn is_triggered(&self) -> bool {
        self.0.is_cancelled()
    }

    /// For tasks: resolves once shutdown is asked for.
    pub async fn wait(&self) {
        self.0.cancelled().await
    }

    /// A signal of its own that also fires when this one does (stopping one source without
    /// stopping the process).
    pub fn child(&self) -> Shutdown {
        Shutdown(self.0.child_token())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_and_children_see_the_signal() {
        let s = Shutdown::new();
        let (clone, child) = (s.clone(), s.child());
        let lone = s.child();
        lone.trigger();
        assert!(
            !s.is_triggered(),
            "a child's trigger does not stop the parent"
        );
        s.trigger();
        assert!(clone.is_triggered() && child.is_triggered());
        assert!(Shutdown::triggered().is_triggered());
    }
}
