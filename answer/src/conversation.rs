//! Follow-up questions made standalone before retrieval: "And for sick
//! leave?" after "How many days of annual leave do I get?" is asked as
//! "How many days of sick leave do I get?".
//!
//! Rules rather than a model call: the small models this runs on rewrite
//! questions poorly (they answer them instead), and the rules cost no
//! generation.

use std::sync::LazyLock;

use regex::Regex;

/// Words that make a short message lean on the one before it.
const FOLLOW_UP_WORDS: &[&str] = &[
    "it", "its", "that", "this", "these", "those", "they", "them", "their", "he", "she", "his",
    "her",
];

/// "what about X", "how about X", "and for X", "and X", "X too?".
static ABOUT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?ix)^\s*(?:and|but|ok|okay|so)?[\s,]*
        (?:(?:what|how)\s+about|what\s+of|and|same\s+for)\s+
        (?:(?P<prep>for|with|in|on|at|during|after|before|from|to|by|if)\s+)?
        (?P<x>[^?.!]+?)\s*(?:,?\s*too|,?\s*as\s+well)?\s*[?.!]*\s*$",
    )
    .expect("valid regex")
});

/// Words that open a question of its own ("Where is parking?").
const QUESTION_WORDS: &[&str] = &[
    "how", "what", "when", "where", "who", "whom", "whose", "why", "which", "can", "could", "do",
    "does", "did", "is", "are", "was", "were", "will", "would", "should", "may", "must", "has",
    "have",
];

/// Words a topic is not made of when it is looked for in the question
/// before.
const NOT_TOPIC: &[&str] = &[
    "a", "an", "the", "of", "to", "in", "on", "for", "is", "are", "do", "does", "i", "we", "my",
    "our", "you", "your", "how", "what", "when", "where", "who", "which", "many", "much", "can",
    "get", "have", "has", "there", "any", "and", "or", "with", "at", "by", "from", "if", "should",
];

/// Kinds of people a follow-up may ask about instead.
const PEOPLE: &[&str] = &[
    "employee",
    "contractor",
    "intern",
    "manager",
    "supervisor",
    "staff",
    "part-timer",
    "temp",
    "fellow",
    "volunteer",
    "new hire",
    "consultant",
    "vendor",
    "student",
    "executive",
    "worker",
];

fn singular(word: &str) -> String {
    let w = word.to_lowercase();
    w.strip_suffix('s').map(str::to_string).unwrap_or(w)
}

/// The question to retrieve for and answer: the last user message, made
/// standalone from the one before when it reads as a follow-up.
/// - "what about X" / "and for X": X takes the place of what the earlier
///   question asked about (the phrase after the same preposition, or the
///   phrase ending in the same noun);
/// - otherwise a short message, or one leaning on a pronoun, is asked
///   after the earlier question;
/// - anything else stands alone.
pub fn standalone_question(user_turns: &[String]) -> String {
    let Some(last) = user_turns.last() else {
        return String::new();
    };
    let last = last.trim();
    let Some(previous) = user_turns
        .len()
        .checked_sub(2)
        .map(|i| user_turns[i].trim())
    else {
        return last.to_string();
    };
    let lower = format!(" {} ", last.to_lowercase());
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let opens_a_question = words.first().is_some_and(|w| QUESTION_WORDS.contains(w));
    if words.len() <= 6
        && let Some(caps) = ABOUT.captures(last)
        && !caps["x"]
            .split_whitespace()
            .next()
            .is_some_and(|w| QUESTION_WORDS.contains(&w.to_lowercase().as_str()))
        && let Some(rewritten) =
            substitute(previous, caps.name("prep").map(|m| m.as_str()), &caps["x"])
    {
        return rewritten;
    }
    let leans = FOLLOW_UP_WORDS.iter().any(|w| words.contains(w))
        || matches!(words.first(), Some(&("and" | "also" | "but" | "so")))
        || lower.contains(" what about ")
        || lower.contains(" how about ");
    if (words.len() <= 4 && !opens_a_question) || leans {
        format!("{previous} {last}")
    } else {
        last.to_string()
    }
}

/// `previous` with `topic` in place of what it asked about, when that
/// can be found.
fn substitute(previous: &str, prep: Option<&str>, topic: &str) -> Option<String> {
    let topic = topic.trim();
    let tokens: Vec<(usize, &str)> = word_tokens(previous)
        .into_iter()
        .filter(|(_, w)| w.chars().any(char::is_alphanumeric))
        .collect();
    // "per diem for travel" + "and for meals": the phrase after the same
    // preposition, up to the end of its clause.
    if let Some(prep) = prep
        && let Some(i) = tokens
            .iter()
            .rposition(|(_, w)| w.eq_ignore_ascii_case(prep))
        && i + 1 < tokens.len()
    {
        let start = tokens[i + 1].0;
        let end = previous[start..]
            .find([',', '?', '.', '!', ';'])
            .map_or(previous.len(), |e| start + e);
        return Some(format!("{}{topic}{}", &previous[..start], &previous[end..]));
    }
    // "days of annual leave" + "and for sick leave": the phrase ending in
    // the topic's last word.
    // "can employees ..." + "what about contractors": one kind of people
    // for another.
    let head = singular(topic.split_whitespace().last()?);
    let people = |w: &str| PEOPLE.contains(&singular(w).as_str());
    let at = tokens
        .iter()
        .rposition(|(_, w)| singular(w) == head)
        .or_else(|| {
            people(&head)
                .then(|| tokens.iter().position(|(_, w)| people(w)))
                .flatten()
        })?;
    // A topic with a modifier ("sick leave") replaces the modifier too
    // ("annual leave"): one word back, if it reads as one (not a stop
    // word, and not ending in "s" like a verb, "approves", or a plural).
    let mut from = at;
    if topic.split_whitespace().count() >= 2 && from > 0 {
        let before = tokens[from - 1].1.to_lowercase();
        if !NOT_TOPIC.contains(&before.as_str()) && !before.ends_with('s') {
            from -= 1;
        }
    }
    let (start, end) = (tokens[from].0, tokens[at].0 + tokens[at].1.len());
    Some(format!("{}{topic}{}", &previous[..start], &previous[end..]))
}

/// Words (with inner apostrophes) and single other characters, with
/// their offsets.
fn word_tokens(text: &str) -> Vec<(usize, &str)> {
    static WORD: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"[\p{L}\p{N}]+(?:['’][\p{L}]+)?|\S").expect("valid regex"));
    WORD.find_iter(text)
        .map(|m| (m.start(), m.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(t: &[&str]) -> String {
        standalone_question(&t.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn a_follow_up_takes_the_place_of_the_earlier_topic() {
        assert_eq!(
            ask(&[
                "How many days of annual leave do I get?",
                "And for sick leave?"
            ]),
            "How many days of sick leave do I get?"
        );
        assert_eq!(
            ask(&["What is the per diem for travel?", "And for meals?"]),
            "What is the per diem for meals?"
        );
        assert_eq!(
            ask(&[
                "Can employees work remotely from abroad?",
                "What about contractors?"
            ]),
            "Can contractors work remotely from abroad?"
        );
    }

    #[test]
    fn follow_ups_that_are_questions_of_their_own_are_not_spliced() {
        assert_eq!(
            ask(&["Who approves leave requests?", "What about sick leave?"]),
            "Who approves sick leave requests?"
        );
        assert_eq!(
            ask(&["Who can apply for parental leave?", "And how do I apply?"]),
            "Who can apply for parental leave? And how do I apply?"
        );
        assert_eq!(
            ask(&[
                "How many days of annual leave do I get?",
                "Where is parking?"
            ]),
            "Where is parking?"
        );
    }

    #[test]
    fn a_follow_up_leaning_on_a_pronoun_takes_the_previous_question_in() {
        assert_eq!(
            ask(&[
                "Who approves expense reports?",
                "How long does it usually take them to do so?"
            ]),
            "Who approves expense reports? How long does it usually take them to do so?"
        );
    }

    #[test]
    fn a_standalone_question_is_left_alone() {
        assert_eq!(
            ask(&[
                "What is the per diem for travel?",
                "How many vacation days do new employees get?"
            ]),
            "How many vacation days do new employees get?"
        );
        assert_eq!(
            ask(&["How do I book a meeting room?"]),
            "How do I book a meeting room?"
        );
        assert_eq!(ask(&[]), "");
    }
}
