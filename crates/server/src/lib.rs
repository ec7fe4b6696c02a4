//! OpenAI-compatible HTTP server over the engine: chat and text completions (JSON and SSE),
//! models, health and Prometheus metrics, with a continuous-batching scheduler thread.

pub mod answer;
pub mod api;
pub mod auth;
pub mod error;
pub mod http;
pub mod image;
pub mod metrics;
pub mod respond;
pub mod scheduler;
pub mod structured;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use engine::speculative::ModelDrafter;
use engine::Engine;
use tokenizer::Tokenizer;

use crate::http::AppState;
use crate::metrics::Metrics;
pub use crate::scheduler::prefix::{checkpoint_interval, CacheConfig, DEFAULT_CHECKPOINT_EVERY};
use crate::scheduler::SchedulerConfig;
pub use crate::scheduler::Speculation;

/// How to serve.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on.
    pub host: String,
    /// Port (0: any free one).
    pub port: u16,
    /// Name reported by `/v1/models`.
    pub model_id: String,
    /// Requests that may wait for a free slot; more are answered 429.
    pub queue: usize,
    /// Largest request body accepted, in bytes.
    pub max_body: usize,
    /// Prompt chunk length (chunks at fixed offsets, so results do not depend on load).
    pub prefill_chunk: usize,
    /// Shut down gracefully on SIGTERM and Ctrl-C (SIGINT).
    pub handle_signals: bool,
    /// Speculative decoding of every sequence. The engine should be loaded with
    /// `max_logit_rows` of at least `n_seq × (draft_max + 1)`, or drafts are cut to fit.
    /// [`Speculation::Draft`] needs the draft model: see [`Server::start_with_drafter`].
    pub spec: Speculation,
    /// A vision projector ("mmproj" GGUF): chat requests may then hold `image_url` parts
    /// (base64 data URLs).
    pub mmproj: Option<std::path::PathBuf>,
    /// Fetch http(s) image URLs (else they are refused with a 400). Off by default: the
    /// server would make requests wherever a client points it.
    pub allow_image_urls: bool,
    /// API keys: when not empty, every route but `/health` needs
    /// `Authorization: Bearer KEY` with one of them (see [`auth::require_key`]).
    pub api_keys: auth::ApiKeys,
    /// Split `<think>` blocks into `reasoning_content` (`--reasoning-format auto`, the
    /// default); false keeps them in `content` (`none`).
    pub reasoning: bool,
    /// Prefix reuse: host memory for evicted prefixes and recurrent checkpoints.
    pub cache: CacheConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: "127.0.0.1".into(),
            port: 8080,
            model_id: "model".into(),
            queue: 64,
            max_body: 1 << 20,
            prefill_chunk: 128,
            handle_signals: false,
            spec: Speculation::Off,
            mmproj: None,
            allow_image_urls: false,
            api_keys: auth::ApiKeys::default(),
            reasoning: true,
            cache: CacheConfig::default(),
        }
    }
}

/// A running server: the HTTP side on a tokio runtime thread, the engine on its own thread.
pub struct Server {
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    http: Option<JoinHandle<()>>,
    scheduler: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    vision_memory: Option<vision::VisionMemory>,
}

impl Server {
    /// Binds the listener and starts serving `engine`. `tokenizer` is a second tokenizer of
    /// the same model (see [`Engine::tokenizer_from_file`]) for the request handlers.
    pub fn start(engine: Engine, tokenizer: Tokenizer, cfg: Config) -> std::io::Result<Server> {
        Server::start_with_drafter(engine, None, tokenizer, cfg)
    }

    /// [`Server::start`] with the draft model of [`Speculation::Draft`]: `drafter` (made
    /// for `engine`, see [`ModelDrafter::load_for`]) should have a sequence per slot
    /// (`engine`'s `n_seq`); it runs on the scheduler thread, on the engine's threads.
    /// Fails (invalid input) when `cfg.spec` is [`Speculation::Draft`] without a drafter.
    pub fn start_with_drafter(
        engine: Engine,
        drafter: Option<ModelDrafter>,
        tokenizer: Tokenizer,
        cfg: Config,
    ) -> std::io::Result<Server> {
        if matches!(cfg.spec, Speculation::Draft { .. }) && drafter.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "speculative decoding with a draft model needs the draft model",
            ));
        }
        let vision = match &cfg.mmproj {
            Some(path) => Some(Arc::new(load_vision(&engine, path)?)),
            None => None,
        };
        let vision_memory = vision.as_ref().map(|v| v.projector.memory());
        let listener = std::net::TcpListener::bind((cfg.host.as_str(), cfg.port))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let slots = engine.n_seq().min(engine.max_logit_rows()).max(1);
        let metrics = Arc::new(Metrics::new(slots));
        let tokenizer = Arc::new(tokenizer);
        let (tx, rx) = std::sync::mpsc::sync_channel(cfg.queue);
        let state = Arc::new(AppState {
            queue: tx,
            metrics: metrics.clone(),
            tokenizer: tokenizer.clone(),
            template: engine.template.clone(),
            model_id: cfg.model_id.clone(),
            n_ctx: engine.n_ctx(),
            n_vocab: engine.n_vocab(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            vision,
            allow_image_urls: cfg.allow_image_urls,
            api_keys: Arc::new(cfg.api_keys.clone()),
            vocab: constrain::Vocabulary::new(&tokenizer, engine.n_vocab()).ok(),
            tool_format: constrain::tools::ToolFormat::for_model(
                &engine.model.hp.arch,
                engine.template.source(),
            ),
            thinks: engine.template.source().contains("<think>"),
            reasoning: cfg.reasoning,
            n_slots: slots,
            recurrent: engine.has_recurrent(),
        });
        metrics.alive.store(true, Ordering::SeqCst);
        let m = metrics.clone();
        let sched_cfg = SchedulerConfig {
            prefill_chunk: cfg.prefill_chunk,
            spec: cfg.spec,
            draft: drafter,
            cache: cfg.cache,
        };
        let scheduler = std::thread::Builder::new()
            .name("scheduler".into())
            .spawn(move || {
                // Marks the scheduler dead however it ends (a panic included).
                struct Alive(Arc<Metrics>);
                impl Drop for Alive {
                    fn drop(&mut self) {
                        self.0.alive.store(false, Ordering::SeqCst);
                    }
                }
                let _alive = Alive(m.clone());
                scheduler::run(engine, tokenizer, rx, m, sched_cfg);
            })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app = http::router(state, cfg.max_body);
        let signals = cfg.handle_signals;
        let http = std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                rt.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            eprintln!("error: listening: {e}");
                            return;
                        }
                    };
                    let r = axum::serve(listener, app)
                        .with_graceful_shutdown(async move {
                            tokio::select! {
                                _ = stop_rx => {}
                                _ = signal(signals) => {
                                    eprintln!("shutting down: finishing the open requests");
                                }
                            }
                        })
                        .await;
                    if let Err(e) = r {
                        eprintln!("error: serving: {e}");
                    }
                });
                // Drop the runtime here: open streams end, the queue's sender is dropped
                // and the scheduler finishes.
            })?;
        Ok(Server {
            addr,
            shutdown: Some(stop_tx),
            http: Some(http),
            scheduler: Some(scheduler),
            metrics,
            vision_memory,
        })
    }

    /// What the vision projector needs in memory, when one is loaded.
    pub fn vision_memory(&self) -> Option<vision::VisionMemory> {
        self.vision_memory
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Stops accepting connections, lets the open requests finish, then stops the
    /// scheduler.
    pub fn shutdown(mut self) {
        self.stop();
    }

    /// Blocks until the server ends (after [`Server::shutdown`] from elsewhere, or a
    /// failure).
    pub fn wait(mut self) {
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
        if let Some(h) = self.scheduler.take() {
            let _ = h.join();
        }
    }

    /// A handle that asks the server to shut down gracefully.
    pub fn shutdown_handle(&mut self) -> Option<tokio::sync::oneshot::Sender<()>> {
        self.shutdown.take()
    }

    fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
        if let Some(h) = self.scheduler.take() {
            let _ = h.join();
        }
    }
}

/// Loads the projector at `path` and checks that it fits `engine`'s model.
fn load_vision(engine: &Engine, path: &std::path::Path) -> std::io::Result<http::Vision> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let projector = vision::Projector::open(path)
        .map_err(|e| invalid(format!("loading the projector {}: {e}", path.display())))?;
    let n_embd = engine.model.hp.n_embd;
    if projector.n_embd_out() != n_embd {
        return Err(invalid(format!(
            "the projector {} makes {}-wide embeddings; the model takes {n_embd}",
            path.display(),
            projector.n_embd_out()
        )));
    }
    let tokens = engine::image_tokens(&engine.tokenizer, engine.model.family)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(http::Vision {
        projector,
        tokens,
        n_embd,
        max_rows: engine.n_batch(),
    })
}

/// Resolves on SIGTERM or Ctrl-C when `enabled`; never otherwise.
async fn signal(enabled: bool) {
    if !enabled {
        return std::future::pending().await;
    }
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
