//! `gmem-sim diff`: the differential fuzzer between a reference backend (the real `/dev/kvm`)
//! and the simulator.
//!
//! Each case is a random sequence of host-side operations ([`gen`]), generated with proptest
//! from a per-case seed ([`case_seed`]), rendered as `.gms` text ([`render`]), parsed with
//! [`crate::script::parse`] and run with [`crate::runner::run_program`] on a fresh backend of
//! each kind, so what is compared is exactly what a script would print. The result lines are
//! compared one by one: a line the reference skips is not compared; a line only the simulator
//! skips is a divergence; a line the one list of accepted differences ([`exclusions`]) matches
//! is counted apart. After a skipped or accepted line whose verb may change state (anything but
//! `load`, `fstat` and `check_extension`), and after a store or madvise that reaches past its
//! mapping (it acts on whatever the address-space layout put there), the two sides may no
//! longer hold the same state, so the rest of that sequence is not compared (and counted as
//! such).
//!
//! A diverging case is shrunk with proptest's `ValueTree` (`simplify` / `complicate`) to a
//! minimal sequence that still diverges the same way (same verb, same kind of result on each
//! side), printed as a ready-to-run script whose diverging line expects the reference's result,
//! and the run goes on. The last line of the output is
//! `N sequences, M operations, D divergences`.
//!
//! Everything is deterministic given the seed, so a run on two simulators is reproducible byte
//! for byte, and one case can be re-run alone (`--cases 1 --seed X`).

pub mod exclusions;
pub mod gen;
pub mod render;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Write};

use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};

use crate::backend::Backend;
use crate::backends;
use crate::progress::Progress;
use crate::rng::Rng;
use crate::runner::{run_program, LineReport, RunOptions};
use crate::script;
use render::Rendered;

/// The default for `--ops-max`.
pub const DEFAULT_OPS_MAX: usize = 40;
/// The default for `--shrink-iters`.
pub const DEFAULT_SHRINK_ITERS: u32 = 2000;
/// The reference backend `gmem-sim diff` compares against by default.
pub const DEFAULT_REFERENCE: &str = "kvm";
/// The simulator profile that must agree with this machine's `/dev/kvm`.
pub const DEFAULT_KERNEL: &str = "v6.18-pvm";

/// The odd constant that spreads case seeds (the 64-bit golden ratio).
const SEED_STRIDE: u64 = crate::rng::GOLDEN_GAMMA;

/// What a run does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// How many sequences to generate.
    pub cases: u64,
    /// The run's seed; case `i` is generated from [`case_seed`]`(seed, i)`.
    pub seed: u64,
    /// The most operations a sequence has.
    pub ops_max: usize,
    /// The most candidate sequences run while shrinking one divergence.
    pub shrink_iters: u32,
    /// The reference backend as `--reference` names it (`kvm`, `sim:v6.14`), for messages and
    /// the reproduction command.
    pub reference: String,
    /// The simulator's kernel profile (`--kernel`), for messages and the reproduction command.
    pub kernel: String,
}

impl Config {
    /// The default configuration for `cases` sequences from `seed`.
    pub fn new(cases: u64, seed: u64) -> Config {
        Config {
            cases,
            seed,
            ops_max: DEFAULT_OPS_MAX,
            shrink_iters: DEFAULT_SHRINK_ITERS,
            reference: DEFAULT_REFERENCE.to_string(),
            kernel: DEFAULT_KERNEL.to_string(),
        }
    }

    /// The command that re-runs the case generated from `case_seed` alone.
    pub fn reproduce_command(&self, case_seed: u64) -> String {
        let mut command = format!("gmem-sim diff --cases 1 --seed {case_seed:#x} --ops-max {}", self.ops_max);
        if self.reference != DEFAULT_REFERENCE {
            command.push_str(&format!(" --reference {}", self.reference));
        }
        if self.kernel != DEFAULT_KERNEL {
            command.push_str(&format!(" --kernel {}", self.kernel));
        }
        command
    }

    /// How the reference is named in results (`kvm`, `sim:v6.14`).
    fn reference_label(&self) -> &str {
        &self.reference
    }
}

/// The seed case `index` of a run with `seed` is generated from. Case 0's seed is the run's
/// seed, so `--cases 1 --seed X` re-runs the case generated from `X`.
pub fn case_seed(seed: u64, index: u64) -> u64 {
    seed.wrapping_add(index.wrapping_mul(SEED_STRIDE))
}

/// The backend `--reference` names: `kvm` (this machine's `/dev/kvm`, under the kernel
/// profile `kernel`) or `sim:PROFILE` (the simulator under another profile).
pub fn open_reference(reference: &str, kernel: &str) -> Result<Box<dyn Backend>, String> {
    match reference.strip_prefix("sim:") {
        Some(profile) => backends::open("sim", profile),
        None if reference == "kvm" => backends::open("kvm", kernel),
        None => Err(format!("unknown reference `{reference}` (expected `kvm` or `sim:PROFILE`)")),
    }
}

/// Checks a `--reference` value without opening anything.
pub fn check_reference(reference: &str) -> Result<(), String> {
    match reference.strip_prefix("sim:") {
        Some(profile) => gmem_kvm::KernelProfile::by_name(profile).map(|_| ()),
        None if reference == "kvm" => Ok(()),
        None => Err(format!("unknown reference `{reference}` (expected `kvm` or `sim:PROFILE`)")),
    }
}

/// Creates a fresh backend for each run of a sequence.
pub type Factory<'f> = dyn FnMut() -> Result<Box<dyn Backend>, String> + 'f;

/// One divergence, shrunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The index of the case that found it.
    pub case: u64,
    /// The case's seed ([`case_seed`]).
    pub case_seed: u64,
    /// The verb of the diverging line.
    pub verb: String,
    /// The reference's result on the diverging line of the minimal script.
    pub reference: String,
    /// The simulator's result there.
    pub sim: String,
    /// The minimal script, ready to run: its last line is the diverging one, expecting the
    /// reference's result, with the simulator's in a comment.
    pub script: String,
    /// The number of operations in the minimal script.
    pub script_ops: usize,
    /// The shrinking runs made (candidate sequences run on both backends).
    pub shrink_steps: u32,
}

impl Divergence {
    /// `VERB: REFERENCE-KIND vs SIM-KIND`, the key divergences are grouped by.
    pub fn kind(&self) -> String {
        format!("{}: {} vs {}", self.verb, first_word(&self.reference), first_word(&self.sim))
    }
}

/// How often one accepted difference was seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExcludedCount {
    /// Diverging lines it accepted.
    pub lines: u64,
    /// Sequences with at least one such line.
    pub sequences: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Sequences run.
    pub sequences: u64,
    /// Operations (script lines) in them, shrinking runs not counted.
    pub operations: u64,
    /// Every divergence found (at most one per sequence), shrunk.
    pub divergences: Vec<Divergence>,
    /// The accepted differences seen, by [`exclusions::Exclusion::name`].
    pub excluded: BTreeMap<&'static str, ExcludedCount>,
    /// Lines the reference skipped (not compared).
    pub skipped: u64,
    /// The same lines by the reason the reference gave (the text after `skip `).
    pub skip_reasons: BTreeMap<String, u64>,
    /// Lines whose results were compared (equal or not), by verb.
    pub compared: BTreeMap<String, u64>,
    /// Lines not compared because an earlier line that may change state was skipped by the
    /// reference or accepted by an exclusion.
    pub uncompared: u64,
}

impl Summary {
    /// `N sequences, M operations, D divergences`.
    pub fn last_line(&self) -> String {
        format!("{} sequences, {} operations, {} divergences", self.sequences, self.operations, self.divergences.len())
    }
}

/// Why a run stopped.
#[derive(Debug)]
pub enum DiffError {
    /// A backend could not be opened.
    Backend {
        /// Which side (`reference`, `simulator`).
        side: &'static str,
        /// The backend's name (`kvm`, `sim:v6.18-pvm`).
        name: String,
        /// The backend's message.
        message: String,
    },
    /// A rendered sequence did not parse (a bug in the renderer).
    Render {
        /// The script text.
        text: String,
        /// The parse error.
        error: String,
    },
    /// The generator failed (a bug in a strategy).
    Generate(String),
    /// Writing the output failed.
    Output(io::Error),
}

impl fmt::Display for DiffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiffError::Backend { side, name, message } => {
                write!(f, "cannot open the {side} backend `{name}`: {message}")
            }
            DiffError::Render { text, error } => {
                write!(f, "internal error: a generated script does not parse: {error}\n{text}")
            }
            DiffError::Generate(reason) => write!(f, "internal error: the generator failed: {reason}"),
            DiffError::Output(error) => write!(f, "cannot write the output: {error}"),
        }
    }
}

impl std::error::Error for DiffError {}

impl From<io::Error> for DiffError {
    fn from(error: io::Error) -> Self {
        DiffError::Output(error)
    }
}

/// The first diverging line of one run of a sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LineDiff {
    /// The index of the line in the rendered script.
    index: usize,
    verb: String,
    reference: String,
    sim: String,
}

impl LineDiff {
    /// What shrinking must preserve: the verb and the kind of result on each side.
    fn signature(&self) -> (String, String, String) {
        (self.verb.clone(), first_word(&self.reference).to_string(), first_word(&self.sim).to_string())
    }
}

/// The outcome of running one sequence on both backends.
#[derive(Debug, Default)]
struct Comparison {
    /// The first line that diverges and no exclusion accepts.
    divergence: Option<LineDiff>,
    /// The exclusions that accepted lines before it.
    excluded: Vec<&'static str>,
    /// The reasons of the lines the reference skipped, one entry per line.
    skipped: Vec<String>,
    /// The verbs of the lines whose results were compared, one entry per line.
    compared: Vec<&'static str>,
    /// The lines left uncompared after a line whose effect may differ between the sides (skipped
    /// or excluded).
    uncompared: usize,
}

/// Whether `op` leaves the state as it found it, so that a line where the two sides were not
/// compared (skipped or excluded) does not make the following lines incomparable.
fn is_pure(op: &script::Op) -> bool {
    use script::Op::*;
    matches!(op, Load { .. } | Fstat { .. } | CheckExtension { .. })
}

/// The two sides of a comparison.
struct Sides<'a, 'f> {
    reference: &'a mut Factory<'f>,
    sim: &'a mut Factory<'f>,
    config: &'a Config,
}

impl Sides<'_, '_> {
    fn open(&mut self, reference: bool) -> Result<Box<dyn Backend>, DiffError> {
        let (side, name, factory) = match reference {
            true => ("reference", self.config.reference.clone(), &mut *self.reference),
            false => ("simulator", format!("sim:{}", self.config.kernel), &mut *self.sim),
        };
        factory().map_err(|message| DiffError::Backend { side, name, message })
    }

    /// Runs the rendered script `text` on a fresh backend of each side and compares the results.
    fn compare(&mut self, text: &str) -> Result<Comparison, DiffError> {
        let program = script::parse("diff.gms", text)
            .map_err(|error| DiffError::Render { text: text.to_string(), error: error.to_string() })?;
        let reference_lines = self.run(&program, true)?;
        let sim_lines = self.run(&program, false)?;
        let mut comparison = Comparison::default();
        let lines = program.lines.iter().zip(reference_lines.iter().zip(&sim_lines)).enumerate();
        for (index, (line, (r, s))) in lines {
            let skipped = r.result.starts_with("skip");
            if !skipped {
                comparison.compared.push(line.op.verb());
            }
            if !skipped && r.result == s.result && r.details == s.details {
                continue;
            }
            let diverging = exclusions::DivergingLine { op: &line.op, reference: &r.result, sim: &s.result };
            let exclusion = if skipped { None } else { exclusions::find(&diverging) };
            if let Some(exclusion) = exclusion {
                comparison.excluded.push(exclusion.name);
            }
            if skipped || exclusion.is_some() {
                // The line was not compared. If it may have changed state differently on the two
                // sides, nothing after it is comparable either.
                if !is_pure(&line.op) {
                    comparison.uncompared = program.lines.len() - index - 1;
                    break;
                }
                continue;
            }
            let verb = line.op.verb().to_string();
            comparison.divergence = Some(LineDiff { index, verb, reference: r.result.clone(), sim: s.result.clone() });
            break;
        }
        comparison.skipped = reference_lines
            .iter()
            .filter_map(|r| r.result.strip_prefix("skip"))
            .map(|reason| reason.trim().to_string())
            .collect();
        Ok(comparison)
    }

    fn run(&mut self, program: &script::Program, reference: bool) -> Result<Vec<LineReport>, DiffError> {
        let mut backend = self.open(reference)?;
        Ok(run_program(program, backend.as_mut(), RunOptions::default(), false, &mut io::sink())?)
    }
}

/// The proptest RNG of the case generated from `case_seed`.
fn case_rng(case_seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    Rng::from_state(case_seed).fill_bytes(&mut bytes);
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Renders a generated case.
fn render_case(case: &gen::Case, ops_max: usize) -> Rendered {
    let (vm, gmems, vcpus, maps, body) = case;
    render::render(std::iter::once(vm).chain(gmems).chain(vcpus).chain(maps).chain(body), ops_max)
}

/// The sequence of case `case_seed` (for tests and tools): its script text.
pub fn generate(case_seed: u64, ops_max: usize) -> Result<String, DiffError> {
    let strategy = gen::sequence(ops_max);
    let mut runner = TestRunner::new_with_rng(ProptestConfig::default(), case_rng(case_seed));
    let tree = strategy.new_tree(&mut runner).map_err(|reason| DiffError::Generate(reason.to_string()))?;
    Ok(render_case(&tree.current(), ops_max).text())
}

/// Runs `config.cases` sequences, each on a fresh backend from `reference` and from `sim`,
/// printing every divergence (shrunk) to `out` as it is found, then the excluded counts, the
/// divergence kinds and the last line, while `progress` shows the sequences done.
pub fn run(
    config: &Config,
    reference: &mut Factory<'_>,
    sim: &mut Factory<'_>,
    out: &mut dyn Write,
    progress: &Progress,
) -> Result<Summary, DiffError> {
    let mut sides = Sides { reference, sim, config };
    // Fail early, with a clear message, if a side cannot be opened at all.
    drop(sides.open(true)?);
    drop(sides.open(false)?);
    writeln!(
        out,
        "# gmem-sim diff: seed {:#x}, {} cases, ops-max {}, reference {}, simulator sim:{}",
        config.seed,
        config.cases,
        config.ops_max,
        config.reference_label(),
        config.kernel
    )?;
    let strategy = gen::sequence(config.ops_max);
    let mut summary = Summary::default();
    progress.start(config.cases);
    for case in 0..config.cases {
        let seed = case_seed(config.seed, case);
        let mut runner = TestRunner::new_with_rng(ProptestConfig::default(), case_rng(seed));
        let mut tree = strategy.new_tree(&mut runner).map_err(|reason| DiffError::Generate(reason.to_string()))?;
        let rendered = render_case(&tree.current(), config.ops_max);
        let comparison = sides.compare(&rendered.text())?;
        summary.sequences += 1;
        summary.operations += rendered.lines.len() as u64;
        count_excluded(&mut summary, &comparison.excluded);
        summary.skipped += comparison.skipped.len() as u64;
        for reason in comparison.skipped {
            *summary.skip_reasons.entry(reason).or_default() += 1;
        }
        for verb in comparison.compared {
            *summary.compared.entry(verb.to_string()).or_default() += 1;
        }
        summary.uncompared += comparison.uncompared as u64;
        if let Some(diff) = comparison.divergence {
            let divergence = shrink(&mut sides, &mut tree, rendered, diff, case, seed)?;
            progress.suspend(|| print_divergence(out, config, summary.divergences.len() + 1, &divergence))?;
            summary.divergences.push(divergence);
        }
        progress.update(case + 1, || progress_message(case + 1, config.cases, &summary));
    }
    progress.finish(|| progress_message(config.cases, config.cases, &summary));
    print_totals(out, &summary)?;
    Ok(summary)
}

fn count_excluded(summary: &mut Summary, names: &[&'static str]) {
    let mut seen: Vec<&'static str> = Vec::new();
    for name in names {
        let count = summary.excluded.entry(name).or_default();
        count.lines += 1;
        if !seen.contains(name) {
            seen.push(name);
            count.sequences += 1;
        }
    }
}

/// Shrinks a diverging case to a minimal sequence with the same divergence signature.
///
/// A line's result depends only on the lines before it, so every candidate is cut after the
/// line where the best sequence so far diverges: operations after it cannot matter, and
/// candidates that differ only there render the same text and are answered from a cache
/// without running anything. `shrink_iters` bounds the runs on the backends.
fn shrink<T: ValueTree<Value = gen::Case>>(
    sides: &mut Sides<'_, '_>,
    tree: &mut T,
    rendered: Rendered,
    diff: LineDiff,
    case: u64,
    case_seed: u64,
) -> Result<Divergence, DiffError> {
    let signature = diff.signature();
    let ops_max = sides.config.ops_max;
    let mut best = (rendered, diff);
    let mut tried: HashMap<String, Option<LineDiff>> = HashMap::new();
    let (mut runs, mut steps) = (0u32, 0u64);
    let step_limit = u64::from(sides.config.shrink_iters).saturating_mul(50);
    let mut more = tree.simplify();
    while more && runs < sides.config.shrink_iters && steps < step_limit {
        steps += 1;
        let mut candidate = render_case(&tree.current(), ops_max);
        candidate.lines.truncate(best.1.index + 1);
        let text = candidate.text();
        let kept = match tried.get(&text) {
            Some(kept) => kept.clone(),
            None => {
                runs += 1;
                let comparison = sides.compare(&text)?;
                let kept = comparison.divergence.filter(|d| d.signature() == signature);
                tried.insert(text, kept.clone());
                kept
            }
        };
        more = match kept {
            Some(diff) => {
                best = (candidate, diff);
                tree.simplify()
            }
            // proptest's own loop stops when a passing candidate cannot be complicated; going on
            // with `simplify` lets the other operations and fields shrink too (only candidates
            // that still diverge ever become `best`).
            None => tree.complicate() || tree.simplify(),
        };
    }
    let (rendered, diff) = best;
    let script = minimal_script(&rendered, &diff);
    Ok(Divergence {
        case,
        case_seed,
        verb: diff.verb,
        reference: diff.reference,
        sim: diff.sim,
        script,
        script_ops: diff.index + 1,
        shrink_steps: runs,
    })
}

/// The lines up to the diverging one, which expects the reference's result.
fn minimal_script(rendered: &Rendered, diff: &LineDiff) -> String {
    let mut text = String::new();
    for (index, line) in rendered.lines.iter().enumerate().take(diff.index + 1) {
        text.push_str(line);
        if index == diff.index {
            text.push_str(&format!(" => {}  # sim: {}", diff.reference, diff.sim));
        }
        text.push('\n');
    }
    text
}

fn print_divergence(out: &mut dyn Write, config: &Config, number: usize, d: &Divergence) -> io::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "# divergence {number}: case {} (seed {:#x}), line {} ({}): {} `{}`, sim `{}`",
        d.case,
        d.case_seed,
        d.script_ops,
        d.verb,
        config.reference_label(),
        abbreviate(&d.reference),
        abbreviate(&d.sim)
    )?;
    writeln!(out, "# reproduce: {}", config.reproduce_command(d.case_seed))?;
    writeln!(
        out,
        "# minimal script ({} operations, {} shrinking runs); the last line diverges:",
        d.script_ops, d.shrink_steps
    )?;
    write!(out, "{}", d.script)?;
    Ok(())
}

fn print_totals(out: &mut dyn Write, summary: &Summary) -> io::Result<()> {
    writeln!(out)?;
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for divergence in &summary.divergences {
        *kinds.entry(divergence.kind()).or_default() += 1;
    }
    for (kind, count) in &kinds {
        writeln!(out, "# divergence kind {kind}: {count}")?;
    }
    for exclusion in exclusions::EXCLUSIONS {
        let count = summary.excluded.get(exclusion.name).cloned().unwrap_or_default();
        writeln!(
            out,
            "# excluded {}: {} lines in {} sequences ({})",
            exclusion.name, count.lines, count.sequences, exclusion.reason
        )?;
    }
    let compared: u64 = summary.compared.values().sum();
    let by_verb: Vec<String> = summary.compared.iter().map(|(verb, count)| format!("{verb} {count}")).collect();
    writeln!(out, "# compared: {compared} lines ({})", by_verb.join(", "))?;
    for (reason, count) in &summary.skip_reasons {
        writeln!(out, "# skipped by the reference: {count} lines: {reason}")?;
    }
    let excluded_lines: u64 = summary.excluded.values().map(|c| c.lines).sum();
    writeln!(out, "{excluded_lines} excluded lines (accepted differences, not divergences)")?;
    writeln!(
        out,
        "{} lines skipped by the reference, {} lines not compared after a skipped or excluded line",
        summary.skipped, summary.uncompared
    )?;
    writeln!(out, "{}", summary.last_line())?;
    out.flush()
}

/// The diff's counts beside its progress bar.
fn progress_message(done: u64, cases: u64, summary: &Summary) -> String {
    format!("{done}/{cases} sequences, {} operations, {} divergences", summary.operations, summary.divergences.len())
}

/// `text`, cut to 60 characters with `...` (results of long loads fill a line).
fn abbreviate(text: &str) -> String {
    const MAX: usize = 60;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

fn first_word(text: &str) -> &str {
    text.split_whitespace().next().unwrap_or("")
}
