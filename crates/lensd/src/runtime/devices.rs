//! The engine's devices: each with its candle device, its one compute thread, and whether it
//! is still in service after a failure.

use std::sync::{Arc, Mutex};

use lensd_core::engine::{BoxFuture, DeviceInfo, DriverMemory};
use lensd_core::residency::DeviceId;
use lensd_core::work::JobFailure;
use lensd_engine::device::{self, Device, DeviceSpec, Fault};

/// Work for a compute thread.
type Task = Box<dyn FnOnce() + Send>;

pub(super) struct Slot {
    pub id: DeviceId,
    pub spec: DeviceSpec,
    pub device: Device,
    /// The device's one compute thread: candle's CPU thread pool spins while it waits, so two
    /// computations at once on a small machine are slower than one after the other; on a GPU
    /// one stream per device keeps the order of its work.
    compute: std::sync::mpsc::Sender<Task>,
    /// Why the device left service, once a failure said its context is unusable.
    lost: Mutex<Option<String>>,
    /// What the driver reported when the device was opened.
    at_start: Option<lensd_engine::device::DriverMemory>,
}

impl Slot {
    pub fn open(id: DeviceId, spec: DeviceSpec) -> lensd_engine::Result<Slot> {
        let device = device::open(spec)?;
        let (compute, tasks) = std::sync::mpsc::channel::<Task>();
        std::thread::Builder::new()
            .name(format!("lensd-compute-{spec}"))
            .spawn(move || {
                for task in tasks {
                    task();
                }
            })
            .expect("the compute thread starts");
        let at_start = device::driver_memory(&device);
        Ok(Slot {
            id,
            spec,
            device,
            compute,
            lost: Mutex::new(None),
            at_start,
        })
    }

    pub fn info(&self) -> DeviceInfo {
        let name = match self.spec {
            DeviceSpec::Cpu => "cpu".to_string(),
            spec => format!("{spec} ({})", device::name(&self.device)),
        };
        DeviceInfo {
            id: self.id,
            name,
            total_bytes: self.at_start.map(|m| m.total),
            free_bytes: self.at_start.map(|m| m.free()),
        }
    }

    pub fn driver_memory(&self) -> Option<DriverMemory> {
        device::driver_memory(&self.device).map(|m| DriverMemory {
            used_bytes: m.used,
            total_bytes: m.total,
        })
    }

    pub fn lost(&self) -> Option<String> {
        self.lost.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The message of a failure on this device, rewritten to say what it means for the device:
    /// out of memory fails only the work that asked; an error that leaves the context unusable
    /// takes the device out of service.
    pub fn judge(&self, what: &str, message: String) -> String {
        judge(self.spec, &self.lost, what, message)
    }

    /// Runs `work` on the compute thread after the work before it. A panic fails this work
    /// alone; the thread goes on with the next.
    pub fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, JobFailure> + Send + 'static,
    ) -> BoxFuture<Result<T, JobFailure>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.compute.send(Box::new(move || {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work))
                .unwrap_or_else(|payload| Err(JobFailure::from_panic(payload.as_ref())));
            let _ = tx.send(result);
        }));
        Box::pin(async move {
            if sent.is_err() {
                return Err(JobFailure::Engine("the compute thread has stopped".into()));
            }
            rx.await.unwrap_or_else(|_| {
                Err(JobFailure::Engine(
                    "the compute thread stopped mid-job".into(),
                ))
            })
        })
    }
}

/// [`Slot::judge`] for the device `spec` whose reason for leaving service is `lost`.
fn judge(spec: DeviceSpec, lost: &Mutex<Option<String>>, what: &str, message: String) -> String {
    if spec == DeviceSpec::Cpu {
        return message;
    }
    match device::classify(&message) {
        Fault::OutOfMemory => format!(
            "{spec} ran out of memory while {what} ({message}); lower settings.device_budget so \
             that the driver keeps more room, or send a shorter text"
        ),
        Fault::Lost(name) => {
            let why = format!("{spec} failed with {name} while {what}");
            let mut lost = lost.lock().unwrap_or_else(|e| e.into_inner());
            lost.get_or_insert_with(|| why.clone());
            format!("{why}; the device is out of service until lensd restarts ({message})")
        }
        Fault::Other => message,
    }
}

/// Opens every device of `specs`, numbered in that order.
pub(super) fn open_all(specs: &[DeviceSpec]) -> lensd_engine::Result<Arc<Vec<Slot>>> {
    let slots = specs
        .iter()
        .enumerate()
        .map(|(i, &spec)| Slot::open(DeviceId(i as u16), spec))
        .collect::<lensd_engine::Result<Vec<_>>>()?;
    Ok(Arc::new(slots))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_failure_says_what_it_means_for_the_device() {
        let lost = Mutex::new(None);
        let gpu = DeviceSpec::Cuda(1);
        let m = judge(gpu, &lost, "computing", "CUDA_ERROR_OUT_OF_MEMORY".into());
        assert!(
            m.starts_with("cuda:1 ran out of memory while computing"),
            "{m}"
        );
        assert!(m.contains("device_budget"), "{m}");
        assert_eq!(
            *lost.lock().unwrap(),
            None,
            "out of memory leaves the device in service"
        );

        let shape = "shape mismatch in matmul".to_string();
        assert_eq!(judge(gpu, &lost, "computing", shape.clone()), shape);
        assert_eq!(*lost.lock().unwrap(), None);

        let m = judge(
            gpu,
            &lost,
            "loading base x",
            "DriverError(CUDA_ERROR_ILLEGAL_ADDRESS)".into(),
        );
        assert!(m.contains("out of service"), "{m}");
        let why = lost.lock().unwrap().clone().expect("lost");
        assert_eq!(
            why,
            "cuda:1 failed with CUDA_ERROR_ILLEGAL_ADDRESS while loading base x"
        );
        // The first reason stays.
        judge(gpu, &lost, "computing", "CUDA_ERROR_LAUNCH_FAILED".into());
        assert_eq!(lost.lock().unwrap().clone(), Some(why));
    }

    #[test]
    fn the_cpu_passes_messages_through() {
        let lost = Mutex::new(None);
        let m = judge(DeviceSpec::Cpu, &lost, "computing", "out of memory".into());
        assert_eq!(m, "out of memory");
        assert_eq!(*lost.lock().unwrap(), None);
    }
}
