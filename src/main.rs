//! The `convene` command: `serve` runs a node; `migrate` applies the schema; `users grant-role`
//! gives an account a role; `tokens issue` mints a service token for the bus commands;
//! `cluster status` prints a running cluster's members; `inspect` shows what the operator
//! console shows and `admin` carries out its actions; `recommend eval` scores the
//! recommendation engines offline and `recommend synth` writes a synthetic data set.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use convene::config::{Config, Overrides};
use convene::node::{Node, open_store};
use convene_actors::model::Role;

#[derive(Parser)]
#[command(name = "convene", version, about = "Events platform backend")]
struct Cli {
    /// A TOML file with settings over the embedded defaults.
    #[arg(long, global = true, env = "CONVENE_CONFIG")]
    config: Option<PathBuf>,
    /// Where the SQLite file and the token secret live (default ./data).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a node until SIGINT or SIGTERM.
    Serve {
        /// HTTP listen address (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// This node's unique name in the cluster.
        #[arg(long)]
        node_name: Option<String>,
        /// Node-to-node listen address; makes this node a cluster member.
        #[arg(long)]
        cluster_listen: Option<std::net::SocketAddr>,
        /// The cluster's shared secret.
        #[arg(long)]
        cookie: Option<String>,
        /// Other nodes: `host:port,…` or `dns:NAME:PORT`.
        #[arg(long)]
        seeds: Option<String>,
    },
    /// Inspects a running cluster.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Shows what the operator console shows, as tables or JSON.
    Inspect {
        #[command(flatten)]
        node: NodeArgs,
        /// Prints the endpoint's JSON instead of tables.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        what: InspectCommand,
    },
    /// The operator console's actions; each is audited.
    Admin {
        #[command(flatten)]
        node: NodeArgs,
        /// Prints the endpoint's JSON.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        action: AdminCommand,
    },
    /// Applies the database migrations and exits.
    Migrate,
    /// Builds this node's search index again from the database (stop the node first).
    Reindex,
    /// Manages accounts.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// Mints tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Copies the embedded SQLite database to FILE while nodes serve (one consistent
    /// snapshot). PostgreSQL is backed up with pg_dump.
    Backup {
        /// The copy to write (must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Puts a copy made by `backup` in place of this node's SQLite database (stop the node
    /// first); the database it replaces is kept beside it.
    Restore {
        /// The copy to restore.
        #[arg(long)]
        from: PathBuf,
    },
    /// Evaluates the recommendation engines offline.
    Recommend {
        #[command(subcommand)]
        command: RecommendCommand,
    },
}

#[derive(Subcommand)]
enum RecommendCommand {
    /// Holds out each user's last 20% of interactions, trains on the rest, and prints
    /// precision@10, recall@10, NDCG@10 and coverage for each engine, the hybrid and a
    /// popularity baseline.
    Eval {
        /// A CSV file `user_id,event_id,kind,ts`.
        #[arg(
            long,
            required_unless_present = "synthetic",
            conflicts_with = "synthetic"
        )]
        interactions: Option<PathBuf>,
        /// A CSV file `event_id,title,description,category,tags,lat,lon,date,price`.
        #[arg(long, requires = "interactions")]
        events: Option<PathBuf>,
        /// Evaluates on the synthetic data set of this seed instead of files.
        #[arg(long)]
        synthetic: Option<u64>,
        /// The synthetic set's size: users,events,interactions.
        #[arg(long, default_value = "10000,5000,500000")]
        size: String,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Writes the synthetic data set of a seed as `events.csv` and `interactions.csv`.
    Synth {
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// The directory to write to.
        #[arg(long)]
        out: PathBuf,
        /// Users.
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Events.
        #[arg(long, default_value_t = 5_000)]
        events: usize,
        /// Interactions.
        #[arg(long, default_value_t = 500_000)]
        interactions: usize,
    },
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Prints a new token signed with the cluster's secret (jwt_secret, or the one under the
    /// data directory).
    Issue {
        /// `service`: lets another system send commands over NATS and Kafka.
        #[arg(long)]
        role: String,
        /// How long it is valid, such as `30d`, `12h` or `90m`.
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// Who it is for; shown in its subject (`service:<name>`).
        #[arg(long, default_value = "default")]
        name: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Gives the account with this e-mail address a role (`user` or `admin`).
    GrantRole {
        /// The account's e-mail address.
        email: String,
        /// `user` or `admin`.
        role: String,
    },
}

/// Which node to ask, and as whom.
#[derive(clap::Args)]
struct NodeArgs {
    /// The base URL of any node.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin's access token.
    #[arg(long, global = true, env = "CONVENE_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

impl NodeArgs {
    fn token(&self) -> anyhow::Result<&str> {
        self.token
            .as_deref()
            .context("an admin's token is needed: --token or CONVENE_TOKEN")
    }
}

#[derive(Subcommand)]
enum InspectCommand {
    /// Members with status, CPU, memory and entities; the placement and its pins.
    Members,
    /// Actors per node and kind; the hottest entities and the longest mailboxes.
    Actors,
    /// One entity: its owner, where it is active, its summary and last messages.
    Entity {
        /// `kind/id`, such as `event/42` or `room/room:lobby`.
        key: String,
    },
    /// Rooms with their presence counts, and each node's sockets.
    Rooms,
    /// Outbox, relay lag, published envelopes, dead letters, consumer lag.
    Buses,
    /// Request rate and latency per route, recent errors, anomalies.
    Requests,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Passivates an entity wherever it is active.
    Passivate {
        /// `kind/id`.
        key: String,
    },
    /// Drains a node (hands its entities off) without stopping it.
    Drain {
        /// The member's name.
        node: String,
    },
    /// Takes a drained node back.
    Undrain {
        /// The member's name.
        node: String,
    },
    /// Pins an entity to a member until unmoved or the member leaves.
    Move {
        /// `kind/id`.
        key: String,
        /// The member's name.
        node: String,
    },
    /// Lifts an entity's pin.
    Unmove {
        /// `kind/id`.
        key: String,
    },
    /// Sends a notice to everyone in a room.
    Notice {
        /// `event:{id}` or `room:{name}`.
        room: String,
        /// What it says.
        text: String,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Prints the members as one node sees them, and which node owns a key.
    Status {
        /// The base URL of any node.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// An admin's access token.
        #[arg(long, env = "CONVENE_TOKEN", hide_env_values = true)]
        token: String,
        /// An entity key such as `event/42`: also print its owner.
        #[arg(long)]
        key: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut overrides = Overrides {
        data_dir: cli.data_dir.clone(),
        ..Overrides::default()
    };
    if let Command::Serve {
        listen,
        node_name,
        cluster_listen,
        cookie,
        seeds,
    } = &cli.command
    {
        overrides.listen = *listen;
        overrides.node_name = node_name.clone();
        overrides.cluster_listen = *cluster_listen;
        overrides.cookie = cookie.clone();
        overrides.seeds = seeds.clone();
    }
    let config = Config::load(cli.config.as_deref(), std::env::vars(), &overrides)
        .context("loading configuration")?;
    let telemetry = convene::telemetry::init(&config).context("setting up logs and traces")?;
    let outcome = match cli.command {
        Command::Serve { .. } => serve(config).await,
        Command::Cluster {
            command: ClusterCommand::Status { url, token, key },
        } => convene::console::cluster_status(&url, &token, key.as_deref()).await,
        Command::Inspect { node, json, what } => {
            use convene::console::Inspect;
            let what = match what {
                InspectCommand::Members => Inspect::Members,
                InspectCommand::Actors => Inspect::Actors,
                InspectCommand::Entity { key } => Inspect::Entity(key),
                InspectCommand::Rooms => Inspect::Rooms,
                InspectCommand::Buses => Inspect::Buses,
                InspectCommand::Requests => Inspect::Requests,
            };
            convene::console::inspect(&node.url, node.token()?, what, json).await
        }
        Command::Admin { node, json, action } => {
            use convene::console::Action;
            let action = match action {
                AdminCommand::Passivate { key } => Action::Passivate(key),
                AdminCommand::Drain { node } => Action::Drain(node),
                AdminCommand::Undrain { node } => Action::Undrain(node),
                AdminCommand::Move { key, node } => Action::Move(key, node),
                AdminCommand::Unmove { key } => Action::Unmove(key),
                AdminCommand::Notice { room, text } => Action::Notice(room, text),
            };
            convene::console::act(&node.url, node.token()?, action, json).await
        }
        Command::Tokens {
            command: TokensCommand::Issue { role, ttl, name },
        } => {
            if role != convene::auth::SERVICE_ROLE {
                anyhow::bail!(
                    "only `--role service` tokens are minted here; users get theirs by logging in"
                );
            }
            let ttl = humantime::parse_duration(&ttl)
                .with_context(|| format!("`{ttl}` is not a duration such as 30d or 12h"))?;
            let ttl = i64::try_from(ttl.as_secs()).context("the ttl is too long")?;
            anyhow::ensure!(ttl > 0, "the ttl must be at least a second");
            let secret = convene::node::token_secret(&config)?;
            let auth = convene::auth::Auth::new(&secret, ttl, 1024, 1)?;
            let (token, claims) = auth.issue_service(&name, ttl)?;
            eprintln!(
                "service token for {}, expires {}",
                claims.sub,
                claims.expires_at().to_rfc3339()
            );
            println!("{token}");
            Ok(())
        }
        Command::Migrate => {
            let store = open_store(&config).await?;
            println!("migrations applied ({})", store.backend());
            Ok(())
        }
        Command::Reindex => reindex(config).await,
        Command::Backup { out } => {
            let db = convene::node::sqlite_path(&config).context(
                "backup copies the embedded SQLite store; back PostgreSQL up with pg_dump",
            )?;
            let started = std::time::Instant::now();
            let bytes = convene::backup::backup(&db, &out).await?;
            println!(
                "backed up {} to {} ({bytes} bytes in {:.1} s)",
                db.display(),
                out.display(),
                started.elapsed().as_secs_f64()
            );
            Ok(())
        }
        Command::Restore { from } => {
            let db = convene::node::sqlite_path(&config).context(
                "restore replaces the embedded SQLite store; restore PostgreSQL with pg_restore",
            )?;
            let kept = convene::backup::restore(&from, &db, &config.data_dir).await?;
            println!("restored {} to {}", from.display(), db.display());
            if let Some(kept) = kept {
                println!("the database it replaced is kept as {}", kept.display());
            }
            Ok(())
        }
        Command::Recommend { command } => recommend(&config, command),
        Command::Users {
            command: UsersCommand::GrantRole { email, role },
        } => {
            let role = Role::parse(&role)
                .with_context(|| format!("unknown role `{role}` (user or admin)"))?;
            let store = open_store(&config).await?;
            let email = email.trim().to_lowercase();
            if !store.grant_role(&email, role).await? {
                anyhow::bail!("no account with e-mail address {email}");
            }
            println!(
                "{email} is now {}; new tokens carry its permissions",
                role.as_str()
            );
            Ok(())
        }
    };
    // Sending the last spans waits on the runtime's tasks: not from one of its workers.
    let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
    outcome
}

fn recommend(config: &Config, command: RecommendCommand) -> anyhow::Result<()> {
    use convene::recommend::files;
    use convene_actors::recommend::synthetic::{Shape, generate};
    match command {
        RecommendCommand::Synth {
            seed,
            out,
            users,
            events,
            interactions,
        } => {
            let data = generate(
                seed,
                Shape {
                    users,
                    events,
                    interactions,
                },
            );
            files::write(&out, &data.items, &data.interactions)?;
            eprintln!(
                "{} events and {} interactions written to {}",
                data.items.len(),
                data.interactions.len(),
                out.display()
            );
            Ok(())
        }
        RecommendCommand::Eval {
            interactions,
            events,
            synthetic,
            size,
            json,
        } => {
            let (items, rows) = match (synthetic, interactions) {
                (Some(seed), _) => {
                    let n: Vec<usize> = size
                        .split(',')
                        .map(|x| x.trim().parse())
                        .collect::<Result<_, _>>()
                        .ok()
                        .filter(|n: &Vec<usize>| n.len() == 3)
                        .with_context(|| {
                            format!("--size `{size}` must be users,events,interactions")
                        })?;
                    let data = generate(
                        seed,
                        Shape {
                            users: n[0],
                            events: n[1],
                            interactions: n[2],
                        },
                    );
                    (data.items, data.interactions)
                }
                (None, Some(path)) => {
                    let items = match &events {
                        Some(e) => files::read_events(e)?,
                        None => Vec::new(),
                    };
                    (items, files::read_interactions(&path)?)
                }
                (None, None) => anyhow::bail!("give --interactions FILE or --synthetic SEED"),
            };
            anyhow::ensure!(!rows.is_empty(), "there are no interactions to evaluate");
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(indicatif::ProgressStyle::with_template(
                "{msg:<20} {bar:40} {pos}/{len} users",
            )?);
            if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let started = std::time::Instant::now();
            let progress = bar.clone();
            let eval = convene_actors::recommend::eval::evaluate(
                &items,
                &rows,
                config.recommend_settings(),
                usize::MAX,
                |stage| {
                    progress.set_message(stage.to_owned());
                    progress.tick();
                },
                |n| bar.inc(n),
            );
            bar.finish_and_clear();
            if json {
                println!("{}", convene::recommend::json(&eval));
            } else {
                eprintln!(
                    "{} interactions, {} events, evaluated in {:.1} s",
                    rows.len(),
                    eval.model.items.len(),
                    started.elapsed().as_secs_f64()
                );
                print!("{}", convene::recommend::table(&eval));
            }
            Ok(())
        }
    }
}

async fn reindex(config: Config) -> anyhow::Result<()> {
    let store = open_store(&config).await?;
    let dir = config.data_dir.join("index");
    let index = std::sync::Arc::new(convene::search::SearchIndex::open(&dir).context(
        "opening the search index; a node using this data directory must be stopped first",
    )?);
    let total = store.live_events().await?;
    let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
    )?);
    let started = std::time::Instant::now();
    let progress = bar.clone();
    let (n, _) =
        convene::search::indexer::rebuild(&store, &index, move |n| progress.set_position(n))
            .await?;
    bar.finish();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} events indexed in {secs:.1} s ({:.0} events/s) into {}",
        n as f64 / secs.max(1e-9),
        dir.display()
    );
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // Held while serving, so a restore cannot replace the database under this node.
    let _lock = convene::backup::DataDirLock::acquire(&config.data_dir)?;
    let node = Node::start(config).await?;
    println!("convene listening on {}", node.url());
    shutdown_signal().await;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
