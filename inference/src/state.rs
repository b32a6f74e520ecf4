//! The service's shared state: its identity, the engine once loaded, the scheduler's slots and
//! the metrics; and how a checked job takes a slot and joins the batch. Both the native handlers
//! ([`crate::server`]) and the OpenAI ones ([`crate::openai`]) use it.
use crate::batch::Batcher;
use crate::engine::{Engine, Event, Job};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use std::sync::{Arc, OnceLock};
use tokio::sync::mpsc;

/// Identity of the service, known before the weights are loaded.
#[derive(Debug, Clone)]
pub struct Identity {
    pub model_id: String,
    pub model: String,
    pub arch: String,
    pub device: String,
}

pub struct AppState {
    pub identity: Identity,
    engine: OnceLock<Arc<Engine>>,
    batcher: OnceLock<Batcher>,
    pub scheduler: Scheduler,
    pub metrics: Arc<Metrics>,
}

impl AppState {
    pub fn new(identity: Identity, scheduler: Scheduler, metrics: Arc<Metrics>) -> Self {
        AppState { identity, engine: OnceLock::new(), batcher: OnceLock::new(), scheduler, metrics }
    }

    /// Starts the batch over `engine` and marks the service ready.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.batcher.set(Batcher::start(engine.clone()));
        let _ = self.engine.set(engine);
    }

    pub fn engine(&self) -> Result<Arc<Engine>, ApiError> {
        self.engine.get().cloned().ok_or(ApiError::Loading)
    }

    /// Counts a request refused before it ran.
    pub fn refused(&self, e: &ApiError) {
        let status = match e {
            ApiError::Overloaded { .. } | ApiError::Loading => "overloaded",
            ApiError::Internal(_) => "error",
            _ => "client_error",
        };
        self.metrics.request_done(status);
    }

    /// Takes a slot (waiting in the queue if needed) and adds `job` to the batch.
    pub async fn start(&self, job: Job) -> Result<mpsc::UnboundedReceiver<Event>, ApiError> {
        let batcher = self.batcher.get().ok_or(ApiError::Loading)?;
        let slot = self.scheduler.acquire().await.inspect_err(|e| self.refused(e))?;
        let (tx, rx) = mpsc::unbounded_channel();
        batcher.submit(job, tx, slot);
        Ok(rx)
    }
}

pub type SharedState = Arc<AppState>;
