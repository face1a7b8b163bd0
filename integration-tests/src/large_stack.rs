//! Running an async test on a thread with a larger stack: kube and NATS
//! client futures overflow a test thread's default 2 MiB in debug builds.

use std::future::Future;

/// Runs `test` on a current-thread runtime in a thread with a 16 MiB stack;
/// a panic in it is resumed in the caller.
pub fn run_on_large_stack<F: Future<Output = anyhow::Result<()>> + 'static>(
    test: fn() -> F,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .stack_size(16 << 20)
        .spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(test())
        })?
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// `#[test] fn $name` that runs `async fn $steps()` of the same file on a large stack
/// ([`run_on_large_stack`]):
///
/// ```ignore
/// large_stack_test!(nats_outage_loses_nothing => nats_outage_steps);
///
/// async fn nats_outage_steps() -> anyhow::Result<()> { … }
/// ```
#[macro_export]
macro_rules! large_stack_test {
    ($name:ident => $steps:ident) => {
        #[test]
        fn $name() -> anyhow::Result<()> {
            $crate::large_stack::run_on_large_stack($steps)
        }
    };
}
