//! A minimal agent for the privileged tests: opens (or adopts) the data
//! plane and applies policy files, so that a test can SIGKILL it at any
//! moment, mid-apply included.
//!
//! `egress-apply --pin-dir DIR --cgroup-root CGROUP [--loop] POLICY.yaml...`
//! applies each file in turn (forever, with `--loop`), printing
//! `APPLIED <n> <milliseconds>` after each apply.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{anyhow, Context as _};
use clap::Parser;
use egress_agent::{
    compile,
    dataplane::{cgroup_ids, Dataplane, MapImage},
    sys,
};

#[derive(Parser)]
#[command(about = "Apply policy files to a pinned data plane, for the privileged tests")]
struct Args {
    #[arg(long)]
    pin_dir: PathBuf,
    #[arg(long)]
    cgroup_root: PathBuf,
    /// Apply the files round-robin until killed.
    #[arg(long = "loop")]
    repeat: bool,
    #[arg(required = true)]
    policies: Vec<PathBuf>,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("egress-apply: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    let mount = sys::cgroup2_mount()?;
    let mut images = Vec::new();
    for path in &args.policies {
        let loaded = egress_policy::load(std::slice::from_ref(path))
            .map_err(|e| anyhow!("{}: {:#?}", path.display(), e.diagnostics))?;
        let plan = compile::compile(&loaded.model);
        images.push(MapImage::build(
            &plan,
            &cgroup_ids(&plan, &mount),
            &BTreeMap::new(),
            false,
        )?);
    }
    let mut dataplane =
        Dataplane::open(&args.pin_dir, &args.cgroup_root).context("opening the data plane")?;
    println!("OPENED");
    for n in 0.. {
        let Some(image) = images.get(n % images.len()) else {
            break;
        };
        if n >= images.len() && !args.repeat {
            break;
        }
        let start = Instant::now();
        dataplane.apply(image)?;
        println!("APPLIED {n} {}", start.elapsed().as_millis());
    }
    Ok(())
}
