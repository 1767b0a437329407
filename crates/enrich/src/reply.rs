//! Turning a chat model's answer into a prompt. Small local models wrap
//! the prompt in what they were told not to: a reasoning block
//! (`<think>…</think>` from Qwen3 and DeepSeek-R1 under Ollama), a label
//! ("Enhanced prompt:"), quotes, Markdown or several lines. What is left
//! must be one line of plain text, and no longer than the server accepts.

/// Labels small models put before the answer, compared in lower case.
const LABELS: [&str; 8] = [
    "enhanced prompt:",
    "enriched prompt:",
    "improved prompt:",
    "rewritten prompt:",
    "revised prompt:",
    "new prompt:",
    "prompt:",
    "here is the enhanced prompt:",
];

/// The prompt in `answer`, or `None` when nothing usable is left.
/// `max_chars` is the server's prompt limit: a longer answer is cut at the
/// last comma or space before it.
pub fn clean(answer: &str, max_chars: usize) -> Option<String> {
    let text = strip_reasoning(answer);
    // One line: the model may have listed the prompt over several lines,
    // or added a note after a blank line; a note is dropped, lines joined.
    let body = text
        .split("\n\n")
        .map(str::trim)
        .find(|p| !p.is_empty() && !is_label_only(p))
        .unwrap_or("");
    let mut line = body
        .lines()
        .map(|l| l.trim().trim_start_matches(['-', '*', '#']).trim())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    line = strip_label(&line);
    line = strip_wrapping(&line);
    let line = line.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.is_empty() {
        return None;
    }
    Some(truncate(&line, max_chars))
}

/// Everything after the last `</think>`; an unclosed `<think>` (the model
/// ran out of tokens while reasoning) leaves nothing.
fn strip_reasoning(answer: &str) -> &str {
    if let Some(end) = answer.rfind("</think>") {
        return &answer[end + "</think>".len()..];
    }
    if answer.trim_start().starts_with("<think>") {
        return "";
    }
    answer
}

fn is_label_only(paragraph: &str) -> bool {
    let lower = paragraph.trim_matches(['*', '#', ' ']).to_lowercase();
    LABELS.iter().any(|l| lower == *l) || lower.ends_with("prompt:") && lower.len() < 60
}

fn strip_label(line: &str) -> String {
    let lower = line.to_lowercase();
    for label in LABELS {
        if lower.starts_with(label) {
            // Labels are ASCII, so the byte length is the same in `line`.
            return line[label.len()..].trim().to_owned();
        }
    }
    line.to_owned()
}

/// Quotes, backticks and `**` around the whole answer.
fn strip_wrapping(line: &str) -> String {
    let mut s = line.trim();
    loop {
        let before = s;
        for (open, close) in [
            ("\"", "\""),
            ("'", "'"),
            ("`", "`"),
            ("**", "**"),
            ("\u{201c}", "\u{201d}"),
        ] {
            if s.len() >= open.len() + close.len() && s.starts_with(open) && s.ends_with(close) {
                s = s[open.len()..s.len() - close.len()].trim();
            }
        }
        if s == before {
            return s.to_owned();
        }
    }
}

fn truncate(line: &str, max_chars: usize) -> String {
    if line.chars().count() <= max_chars {
        return line.to_owned();
    }
    let cut: String = line.chars().take(max_chars).collect();
    let at = cut
        .rfind([',', ' '])
        .filter(|&i| i > 0)
        .unwrap_or(cut.len());
    cut[..at].trim_end_matches([',', ' ']).to_owned()
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn a_plain_answer_is_kept() {
        assert_eq!(
            clean("a red fox in snow, golden hour", 100).as_deref(),
            Some("a red fox in snow, golden hour")
        );
    }

    #[test]
    fn reasoning_labels_quotes_and_notes_are_removed() {
        let answer = "<think>\nThe user wants a fox.\n</think>\n\nEnhanced prompt: \"a red fox \
                      in fresh snow, golden hour\"\n\nNote: I added lighting.";
        assert_eq!(
            clean(answer, 100).as_deref(),
            Some("a red fox in fresh snow, golden hour")
        );
        assert_eq!(
            clean("**Prompt:**\n\n`a fox`", 100).as_deref(),
            Some("a fox"),
            "a label on its own paragraph, then Markdown"
        );
        assert_eq!(
            clean("- a fox\n- in snow", 100).as_deref(),
            Some("a fox in snow")
        );
    }

    #[test]
    fn an_answer_that_is_only_reasoning_is_nothing() {
        assert_eq!(clean("<think>still thinking about", 100), None);
        assert_eq!(clean("  \n ", 100), None);
        assert_eq!(clean("\"\"", 100), None);
    }

    #[test]
    fn long_answers_are_cut_at_a_phrase_boundary() {
        let long = "alpha beta, gamma delta, epsilon";
        assert_eq!(clean(long, 20).as_deref(), Some("alpha beta, gamma"));
        assert!(clean(&"ü".repeat(50), 10).unwrap().chars().count() <= 10);
    }
}
