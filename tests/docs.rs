//! The documentation holds together: the README fits a newcomer's first
//! screens and reaches every page under docs/, and every relative link in
//! the Markdown lands on a file and, where it names one, a heading.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{anchors, prose_lines};

/// The README's budget, in lines.
const README_LINES_MAX: usize = 250;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every Markdown page of the project.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![repo().join("README.md"), repo().join("BENCHMARKS.md")];
    for entry in std::fs::read_dir(repo().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    pages
}

/// The targets of `[text](target)` links (outside code blocks).
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(text) {
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let Some(end) = tail.find(')') else { break };
            out.push(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn the_readme_fits_and_reaches_every_page() {
    let readme = read(&repo().join("README.md"));
    let lines = readme.lines().count();
    assert!(
        lines <= README_LINES_MAX,
        "README.md has {lines} lines (at most {README_LINES_MAX})"
    );
    // The two commands a newcomer needs come first.
    let first_screen: String = readme.lines().take(25).collect::<Vec<_>>().join("\n");
    assert!(
        first_screen.contains("cargo run -- init && cargo run -- enqueue"),
        "{first_screen}"
    );
    assert!(first_screen.contains("\ncargo test\n"), "{first_screen}");
    let linked: BTreeSet<String> = links(&readme)
        .into_iter()
        .map(|l| l.split('#').next().unwrap_or("").to_string())
        .collect();
    for page in pages() {
        let rel = page
            .strip_prefix(repo())
            .expect("in the repository")
            .to_string_lossy()
            .into_owned();
        if rel != "README.md" {
            assert!(linked.contains(&rel), "the README does not link {rel}");
        }
    }
}

#[test]
fn every_relative_link_lands_on_a_file_and_a_heading() {
    let mut broken = Vec::new();
    for page in pages() {
        let text = read(&page);
        let dir = page.parent().expect("a directory");
        for link in links(&text) {
            if link.starts_with("http://") || link.starts_with("https://") {
                continue;
            }
            let (file, fragment) = match link.split_once('#') {
                Some((file, fragment)) => (file, Some(fragment)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() { page.clone() } else { dir.join(file) };
            if !target.exists() {
                broken.push(format!("{}: {link}: no such file", page.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                if target.extension().is_some_and(|e| e == "md") && !anchors(&read(&target)).contains(fragment) {
                    broken.push(format!("{}: {link}: no such heading", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readme_names_every_option_of_every_command() {
    use clap::CommandFactory;
    let readme = read(&repo().join("README.md"));
    let cli = ledgerd::cli::Cli::command();
    let global: BTreeSet<String> = cli
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .collect();
    let mut missing = Vec::new();
    // Each row's command: the lowercase words after `ledgerd`.
    let rows: Vec<(String, &str)> = readme
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("| `ledgerd ")?;
            let words: Vec<&str> = rest
                .split([' ', '`'])
                .take_while(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase()))
                .collect();
            Some((words.join(" "), l))
        })
        .collect();
    let mut check = |path: String, command: &clap::Command| {
        let Some((_, row)) = rows.iter().find(|(words, _)| *words == path) else {
            missing.push(format!("ledgerd {path}: no row in the commands table"));
            return;
        };
        for arg in command.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if global.contains(long) || arg.is_hide_set() || long == "help" || long == "version" {
                continue;
            }
            if !row.contains(&format!("--{long}")) {
                missing.push(format!("ledgerd {path}: --{long}"));
            }
        }
    };
    for sub in cli.get_subcommands() {
        if sub.is_hide_set() {
            continue;
        }
        let nested: Vec<&clap::Command> = sub.get_subcommands().filter(|c| !c.is_hide_set()).collect();
        check(sub.get_name().to_string(), sub);
        for inner in nested {
            check(format!("{} {}", sub.get_name(), inner.get_name()), inner);
        }
    }
    assert!(
        missing.is_empty(),
        "the README's commands table lacks:\n{}",
        missing.join("\n")
    );
}
