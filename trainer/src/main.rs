//! The `trainer` binary: `collect` answers from every model, `ingest` the router's response logs,
//! `score` them, `train` the LightGBM router model and `evaluate` it against baselines.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use polyllm_common::catalog::Catalog;
use polyllm_common::features::{Embedder, Featurizer};
use trainer::table::{read_scores, write_jsonl, Table};

#[derive(Parser)]
#[command(name = "trainer", version, about = "Builds polyllm's router model from the mesh's own answers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct PromptArgs {
    /// The prompt set (JSONL with id, category, prompt, max_tokens, checker).
    #[arg(long, env = "TRAINER_PROMPTS", default_value = "datasets/prompts/routing.jsonl")]
    prompts: PathBuf,
    /// Use only the first N prompts of the set (0 = all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
}

#[derive(Args, Clone)]
struct EmbedderArgs {
    /// all-MiniLM-L6-v2 for the prompt features and reference similarity (`fetch-models --only minilm`).
    #[arg(long, env = "EMBEDDER_DIR", default_value = "models/all-MiniLM-L6-v2")]
    embedder_dir: PathBuf,
}

impl EmbedderArgs {
    fn load(&self) -> Result<Featurizer> {
        let e = Embedder::load(&self.embedder_dir)
            .with_context(|| "loading the embedder (run `fetch-models --only minilm`)".to_string())?;
        Ok(Featurizer::new(e))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Send every prompt to every backend (straight, not through the router) and append the answers.
    Collect {
        #[command(flatten)]
        prompts: PromptArgs,
        /// The backend catalog.
        #[arg(long, env = "BACKENDS", default_value = "models.toml")]
        backends: PathBuf,
        /// Backend ids to ask (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "m1,m2,m3")]
        models: Vec<String>,
        /// Responses file (JSONL); appended to, and pairs already in it are skipped.
        #[arg(long, default_value = "datasets/responses/responses.jsonl")]
        out: PathBuf,
        /// Requests in flight at once per backend (every backend has its own lane).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        /// Per-request timeout in seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
        /// Retries of a failed request before the pair is given up (it is redone on the next run).
        #[arg(long, default_value_t = 1)]
        retries: u32,
    },
    /// Score every collected answer with its prompt's checker (tests, answer match, embedding similarity).
    Score {
        #[command(flatten)]
        prompts: PromptArgs,
        #[arg(long, default_value = "datasets/responses/responses.jsonl")]
        responses: PathBuf,
        #[arg(long, default_value = "datasets/responses/scores.jsonl")]
        out: PathBuf,
        #[command(flatten)]
        embedder: EmbedderArgs,
    },
    /// Train the LightGBM router model (each model's answer quality per prompt) and calibrate its cost weight.
    Train {
        #[command(flatten)]
        prompts: PromptArgs,
        #[arg(long, default_value = "datasets/responses/scores.jsonl")]
        scores: PathBuf,
        /// The model directory to write (model.txt, meta.json, split.json, training_report.json).
        #[arg(long, env = "ROUTER_MODEL", default_value = "router/model")]
        out: PathBuf,
        /// The share of always-largest quality the default cost weight keeps (out of fold).
        #[arg(long, default_value_t = 0.95)]
        quality_target: f64,
        #[arg(long, default_value_t = 5)]
        folds: usize,
        /// Share of each category held out for `evaluate`.
        #[arg(long, default_value_t = 0.25)]
        test_share: f64,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// PCA components of the sentence embedding.
        #[arg(long, default_value_t = 10)]
        pca_dims: usize,
        /// Most boosting rounds (early stopping picks fewer).
        #[arg(long, default_value_t = 400)]
        max_rounds: u32,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[command(flatten)]
        embedder: EmbedderArgs,
    },
    /// Evaluate the router model on its held-out split and leave-one-family-out against baselines; writes report.json/.md/.png.
    Evaluate {
        #[command(flatten)]
        prompts: PromptArgs,
        #[arg(long, default_value = "datasets/responses/scores.jsonl")]
        scores: PathBuf,
        #[arg(long, env = "ROUTER_MODEL", default_value = "router/model")]
        model: PathBuf,
        /// A TTF font for the plot (default: DejaVu Sans from fonts-dejavu-core).
        #[arg(long)]
        font: Option<PathBuf>,
        #[command(flatten)]
        embedder: EmbedderArgs,
    },
    /// Append the router's response logs (its --response-log-dir) to the responses file.
    Ingest {
        #[command(flatten)]
        prompts: PromptArgs,
        /// The router's response log directory.
        #[arg(long)]
        log_dir: PathBuf,
        #[arg(long, default_value = "datasets/responses/responses.jsonl")]
        out: PathBuf,
    },
}

fn load_prompts(args: &PromptArgs) -> Result<Vec<trainer::dataset::PromptRecord>> {
    let he = trainer::dataset::HumanEval::load_installed()?;
    let mut prompts = trainer::dataset::load_prompts(&args.prompts, &he)
        .with_context(|| format!("loading {}", args.prompts.display()))?;
    if args.limit > 0 {
        prompts.truncate(args.limit);
    }
    Ok(prompts)
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Collect { prompts, backends, models, out, concurrency, timeout_secs, retries } => {
            let prompts = load_prompts(&prompts)?;
            let catalog = Catalog::load(&backends).with_context(|| format!("loading {}", backends.display()))?;
            let mut specs = Vec::new();
            for id in &models {
                specs.push(
                    catalog.get(id).cloned().with_context(|| format!("no backend {id} in {}", backends.display()))?,
                );
            }
            eprintln!("collecting {} prompts × {} backends into {}", prompts.len(), specs.len(), out.display());
            let s = trainer::collect::collect(trainer::collect::CollectPlan {
                prompts,
                backends: specs,
                out: out.clone(),
                concurrency,
                timeout: Duration::from_secs(timeout_secs),
                retries,
            })
            .await?;
            eprintln!(
                "done: {} collected, {} already there, {} failed (rerun to retry them) → {}",
                s.collected,
                s.skipped_done,
                s.failed,
                out.display()
            );
            if s.failed > 0 {
                std::process::exit(1);
            }
        }
        Command::Score { prompts, responses, out, embedder } => {
            let he = trainer::dataset::HumanEval::load_installed()?;
            let prompts = trainer::dataset::load_prompts(&prompts.prompts, &he)?;
            let rows = trainer::collect::read_responses(&responses)?;
            let f = embedder.load()?;
            let scores = trainer::scoring::score_all(&prompts, &rows, &he, &f)?;
            write_jsonl(&out, &scores)?;
            let mut by_model: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
            for s in &scores {
                let e = by_model.entry(&s.model).or_default();
                e.0 += s.quality;
                e.1 += 1;
            }
            for (m, (q, n)) in by_model {
                eprintln!("{m}: {n} answers, mean quality {:.3}", q / n as f64);
            }
            eprintln!("{} scores → {}", scores.len(), out.display());
        }
        Command::Train {
            prompts,
            scores,
            out,
            quality_target,
            folds,
            test_share,
            seed,
            pca_dims,
            max_rounds,
            threads,
            embedder,
        } => {
            let prompts = load_prompts(&prompts)?;
            let table = Table::build(&prompts, &read_scores(&scores)?)?;
            let f = embedder.load()?;
            eprintln!("{} prompts answered by all of {}", table.items.len(), table.classes.join(", "));
            let emb = trainer::train::embed_all(&f, &table)?;
            let cfg = trainer::train::TrainConfig {
                out_dir: out.clone(),
                quality_target,
                folds,
                test_share,
                seed,
                pca_dims,
                max_rounds,
                threads,
            };
            let o = trainer::train::train(&table, &emb, &cfg)?;
            eprintln!(
                "trained: {} rounds, CV cross-entropy {:.3} (folds by template family), cost weight {:.3} for {:.0}% of always-largest quality → {}",
                o.report.rounds,
                o.report.cv_log_loss,
                o.report.cost_weight,
                o.report.quality_target * 100.0,
                out.display()
            );
        }
        Command::Evaluate { prompts, scores, model, font, embedder } => {
            let prompts = load_prompts(&prompts)?;
            let table = Table::build(&prompts, &read_scores(&scores)?)?;
            let f = embedder.load()?;
            let emb = trainer::train::embed_all(&f, &table)?;
            let command =
                std::iter::once("trainer".to_string()).chain(std::env::args().skip(1)).collect::<Vec<_>>().join(" ");
            let r = trainer::evaluate::evaluate(&table, &emb, &model, &command)?;
            let files = trainer::evaluate::write_report(&model, &r, font.as_deref())?;
            print!("{}", trainer::evaluate::markdown(&r, false));
            for f in files {
                eprintln!("wrote {}", f.display());
            }
        }
        Command::Ingest { prompts, log_dir, out } => {
            let prompts = load_prompts(&prompts)?;
            let s = trainer::collect::ingest_router_logs(&log_dir, &prompts, &out)?;
            eprintln!(
                "ingested {} answers ({} skipped, {} unreadable) → {}",
                s.collected,
                s.skipped_done,
                s.failed,
                out.display()
            );
        }
    }
    Ok(())
}
