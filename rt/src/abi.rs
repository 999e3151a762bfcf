//! The C entry of ahead-of-time binaries. A model's `{name}_run` and
//! `{name}_run_r` build its buffer table and call [`kiln_rt_run`] with its
//! step list (see [`crate::blob`]), its loop nests and a state word of its
//! own: the first call decodes the steps (packing constant weights once)
//! into an executor kept in that word. `{name}_run` uses the model's one
//! static arena, so its calls take the model's lock and run one at a time;
//! `{name}_run_r` uses an arena the caller passes, and calls with
//! different arenas run at the same time (the executor is shared: see
//! `Exec`).

use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::Mutex;

use crate::executor::{Exec, KernelFn};
use crate::settings::{default_threads, Settings};

/// The last error message, for [`kiln_rt_last_error`].
static LAST_ERROR: Mutex<Option<CString>> = Mutex::new(None);

/// Serializes first calls (decoding) across models.
static INIT: Mutex<()> = Mutex::new(());

/// A model's executor, and the lock of the calls that use its static arena.
pub struct Model {
    exec: Exec,
    arena: Mutex<()>,
}

fn fail(what: String) -> i32 {
    let msg = CString::new(format!("kiln runtime: {what}")).unwrap_or_default();
    if let Ok(mut e) = LAST_ERROR.lock() {
        *e = Some(msg);
    }
    1
}

/// The message of the last failed [`kiln_rt_run`] (empty if none), valid
/// until the next failure.
#[no_mangle]
pub extern "C" fn kiln_rt_last_error() -> *const c_char {
    static EMPTY: &[u8] = b"\0";
    match LAST_ERROR.lock() {
        Ok(e) => e
            .as_ref()
            .map_or(EMPTY.as_ptr() as *const c_char, |s| s.as_ptr()),
        Err(_) => EMPTY.as_ptr() as *const c_char,
    }
}

/// Runs a model's steps over `table` (one pointer per buffer of the
/// program); returns 0, or 1 with [`kiln_rt_last_error`] set. With
/// `exclusive` nonzero (the table addresses the model's static arena) the
/// call holds the model's lock; otherwise it runs alongside other calls.
///
/// # Safety
/// `state` must point at a pointer-sized word of this model's, zero before
/// the first call; `words` (`nwords` words) must be the model's step list,
/// `fns` (`nfns` functions) its loop nests, and `table` (`nbuffers`
/// pointers) must hold live buffers of the program's types, constants at
/// the same addresses on every call.
#[no_mangle]
pub unsafe extern "C" fn kiln_rt_run(
    state: *mut AtomicPtr<Model>,
    words: *const i64,
    nwords: usize,
    fns: *const KernelFn,
    nfns: usize,
    table: *const *mut u8,
    nbuffers: usize,
    exclusive: i64,
) -> i32 {
    let run = || -> Result<(), String> {
        // SAFETY: the caller's contract.
        let state = unsafe { &*state };
        let mut exec = state.load(Ordering::Acquire);
        if exec.is_null() {
            let _init = INIT.lock().map_err(|_| "a first call panicked")?;
            exec = state.load(Ordering::Acquire);
            if exec.is_null() {
                // SAFETY: the caller's contract.
                let (words, fns) = unsafe {
                    (
                        std::slice::from_raw_parts(words, nwords),
                        std::slice::from_raw_parts(fns, nfns),
                    )
                };
                // SAFETY: constants are at their table addresses for good.
                let constant = |b: usize| unsafe { *table.add(b) as *const u8 };
                // A binary's edge: its settings from the environment, once.
                let settings = Settings::from_env()?;
                let steps =
                    unsafe { crate::blob::decode(words, fns, nbuffers, &constant, &settings) }
                        .map_err(|e| format!("the model's step list is corrupt: {e}"))?;
                exec = Box::into_raw(Box::new(Model {
                    exec: Exec::new(steps, default_threads()?, settings.split),
                    arena: Mutex::new(()),
                }));
                state.store(exec, Ordering::Release);
            }
        }
        // SAFETY: set above, never freed (a model lives as long as its program).
        let model = unsafe { &*exec };
        let _arena =
            (exclusive != 0).then(|| model.arena.lock().unwrap_or_else(|p| p.into_inner()));
        let mut host = |i: usize| Err(format!("step {i} needs kiln's interpreter"));
        // SAFETY: the caller's contract.
        unsafe { model.exec.run(table, &mut host, None) }
            .map_err(|e| format!("step {}: {}", e.step, e.reason))
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => fail(e),
        Err(_) => fail("a step panicked".into()),
    }
}
