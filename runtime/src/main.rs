//! The `kiln` command line: run, inspect and convert model files.

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "kiln: a static-graph compiler and runtime for deep learning",
    after_help = "Models are .kiln files or .onnx files (imported in memory). \
                  `kiln help COMMAND` explains a command.\n\n\
                  Example:\n  \
                  kiln run examples/mlp.kiln --input x=examples/digit.npy\n  \
                  kiln bench examples/mlp.kiln --dim batch=32 --profile"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a model on .npy inputs and print (and optionally save) its outputs.
    Run(cli::run::Args),
    /// Measure a model: compile time, time to first result, latency
    /// (median, p90, min over many runs), peak memory, and with --profile
    /// each kernel's mean time. Inputs not given are generated.
    Bench(cli::bench::Args),
    /// Print a model's nodes, inputs, outputs and parameter count.
    Show(cli::show::Args),
    /// Print the memory plan of the optimized program and draw it as SVG.
    Plan(cli::plan::Args),
    /// Run the graph passes and report what they changed.
    Optimize(cli::optimize::Args),
    /// Compile a model ahead of time into an object file, a C header and
    /// kiln's run-time library (`NAME.o`, `NAME.h`, `libkiln_rt.a` in DIR)
    /// that run it without kiln: link with `cc main.c NAME.o libkiln_rt.a
    /// -lm -lpthread -ldl` and call `NAME_run(inputs, outputs)`. Variables
    /// are frozen; every symbolic dim must be given with --dim.
    Compile(cli::compile::Args),
    /// Import an ONNX model (opsets 6 to 22; newer ones are read as 22, with a
    /// warning) as a .kiln file: ONNX ops as
    /// kiln primitives, initializers as constants (or variables with
    /// --trainable), dim_param dims as symbolic dims. Every unsupported
    /// node is listed in one error.
    Import(cli::import::Args),
}

fn main() {
    // Output piped into `head` and closed early ends the process quietly,
    // like other command-line tools, instead of a panic in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE at startup,
    // before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::main(a),
        Command::Bench(a) => cli::bench::main(a),
        Command::Show(a) => cli::show::main(a),
        Command::Plan(a) => cli::plan::main(a),
        Command::Optimize(a) => cli::optimize::main(a),
        Command::Compile(a) => cli::compile::main(a),
        Command::Import(a) => cli::import::main(a),
    };
    if let Err(e) = result {
        eprintln!("kiln: error: {e:#}");
        std::process::exit(1);
    }
}
