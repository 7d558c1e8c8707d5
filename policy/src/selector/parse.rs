//! Tokenizer and recursive-descent parser for selectors.
//!
//! ```text
//! expr    := and ( '||' and )*
//! and     := unary ( '&&' unary )*
//! unary   := '!'* term
//! term    := '(' expr ')' | 'all()' | 'global()' | 'has(' LABEL ')'
//!          | LABEL ('=='|'!=') STR | LABEL ['not'] 'in' '{' [STR (',' STR)*] '}'
//!          | LABEL ('contains' | 'starts with' | 'ends with') STR
//! LABEL   := [A-Za-z0-9_./-]+          STR := '…' | "…"   (no escapes)
//! ```
//! Keywords are recognised by position, so `has`, `in` or `all` remain usable as label
//! names (`in == 'x'`), as in Calico's tokenizer. `startswith`, `endswith` and `notin`
//! are accepted spellings too.

use super::Selector;

/// Why a selector did not parse, with the byte offset where it went wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid selector {text:?}: {message} at offset {offset}")]
pub struct SelectorError {
    pub text: String,
    pub offset: usize,
    pub message: String,
}

/// Nesting deeper than this is refused, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Word(String),
    Str(String),
    LParen,
    RParen,
    LBrace,
    RBrace,
    Comma,
    And,
    Or,
    Not,
    EqEq,
    NotEq,
}

fn is_label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

fn tokenize(text: &str) -> Result<Vec<(usize, Token)>, (usize, String)> {
    let mut out = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some(&(at, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        let two = text.get(at..at + 2);
        let token = match c {
            '(' => Token::LParen,
            ')' => Token::RParen,
            '{' => Token::LBrace,
            '}' => Token::RBrace,
            ',' => Token::Comma,
            '&' if two == Some("&&") => Token::And,
            '|' if two == Some("||") => Token::Or,
            '=' if two == Some("==") => Token::EqEq,
            '!' if two == Some("!=") => Token::NotEq,
            '!' => Token::Not,
            '\'' | '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => break,
                        Some((_, other)) => value.push(other),
                        None => return Err((at, "unterminated string".into())),
                    }
                }
                out.push((at, Token::Str(value)));
                continue;
            }
            c if is_label_char(c) => {
                let mut word = String::new();
                while let Some(&(_, c)) = chars.peek() {
                    if !is_label_char(c) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                out.push((at, Token::Word(word)));
                continue;
            }
            other => return Err((at, format!("unexpected character {other:?}"))),
        };
        let width = match token {
            Token::And | Token::Or | Token::EqEq | Token::NotEq => 2,
            _ => 1,
        };
        for _ in 0..width {
            chars.next();
        }
        out.push((at, token));
    }
    Ok(out)
}

struct Parser<'a> {
    text: &'a str,
    tokens: Vec<(usize, Token)>,
    pos: usize,
    depth: usize,
}

pub(super) fn parse(text: &str) -> Result<Selector, SelectorError> {
    let err = |offset, message| SelectorError {
        text: text.to_owned(),
        offset,
        message,
    };
    let tokens = tokenize(text).map_err(|(at, m)| err(at, m))?;
    if tokens.is_empty() {
        return Ok(Selector::All);
    }
    let mut parser = Parser {
        text,
        tokens,
        pos: 0,
        depth: 0,
    };
    let selector = parser.expr()?;
    if parser.pos < parser.tokens.len() {
        return Err(parser.error("unexpected token after the end of the expression"));
    }
    Ok(selector)
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos).map(|(_, t)| t)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn error(&self, message: &str) -> SelectorError {
        let offset = self
            .tokens
            .get(self.pos)
            .map_or(self.text.len(), |(at, _)| *at);
        SelectorError {
            text: self.text.to_owned(),
            offset,
            message: message.to_owned(),
        }
    }

    fn expect(&mut self, want: Token, what: &str) -> Result<(), SelectorError> {
        if self.peek() == Some(&want) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    fn expr(&mut self) -> Result<Selector, SelectorError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error("selector nested too deeply"));
        }
        let mut parts = vec![self.and()?];
        while self.peek() == Some(&Token::Or) {
            self.pos += 1;
            parts.push(self.and()?);
        }
        self.depth -= 1;
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::Or(parts)
        })
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.unary()?];
        while self.peek() == Some(&Token::And) {
            self.pos += 1;
            parts.push(self.unary()?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            Selector::And(parts)
        })
    }

    /// `!` binds to one term: `!a == 'x' && b == 'y'` is `(!(a == 'x')) && b == 'y'`.
    fn unary(&mut self) -> Result<Selector, SelectorError> {
        let mut negations = 0;
        while self.peek() == Some(&Token::Not) {
            self.pos += 1;
            negations += 1;
            if negations > MAX_DEPTH {
                return Err(self.error("too many negations"));
            }
        }
        let mut term = self.term()?;
        for _ in 0..negations {
            term = Selector::Not(Box::new(term));
        }
        Ok(term)
    }

    fn term(&mut self) -> Result<Selector, SelectorError> {
        match self.next() {
            Some(Token::LParen) => {
                let inner = self.expr()?;
                self.expect(Token::RParen, "')'")?;
                Ok(inner)
            }
            Some(Token::Word(word)) => {
                if self.peek() == Some(&Token::LParen) {
                    return self.function(&word);
                }
                self.comparison(word)
            }
            Some(_) => {
                self.pos -= 1;
                Err(self.error("expected a label, '(', all(), global() or has()"))
            }
            None => Err(self.error("unexpected end of selector")),
        }
    }

    fn function(&mut self, name: &str) -> Result<Selector, SelectorError> {
        self.pos -= 1; // point at the name for errors
        let result = match name {
            "all" | "global" => {
                self.pos += 2;
                self.expect(Token::RParen, "')'")?;
                if name == "all" {
                    Selector::All
                } else {
                    Selector::Global
                }
            }
            "has" => {
                self.pos += 2;
                let label = match self.next() {
                    Some(Token::Word(label)) => label,
                    _ => {
                        self.pos -= 1;
                        return Err(self.error("expected a label name inside has()"));
                    }
                };
                self.expect(Token::RParen, "')'")?;
                Selector::Has(label)
            }
            _ => return Err(self.error("unknown function (expected all(), global() or has())")),
        };
        Ok(result)
    }

    fn comparison(&mut self, label: String) -> Result<Selector, SelectorError> {
        match self.next() {
            Some(Token::EqEq) => Ok(Selector::Eq(label, self.string()?)),
            Some(Token::NotEq) => Ok(Selector::Ne(label, self.string()?)),
            Some(Token::Word(op)) => match op.as_str() {
                "in" => Ok(Selector::In(label, self.set()?)),
                "notin" => Ok(Selector::NotIn(label, self.set()?)),
                "not" if self.peek() == Some(&Token::Word("in".into())) => {
                    self.pos += 1;
                    Ok(Selector::NotIn(label, self.set()?))
                }
                "contains" => Ok(Selector::Contains(label, self.string()?)),
                "startswith" => Ok(Selector::StartsWith(label, self.string()?)),
                "endswith" => Ok(Selector::EndsWith(label, self.string()?)),
                "starts" | "ends" if self.peek() == Some(&Token::Word("with".into())) => {
                    self.pos += 1;
                    let value = self.string()?;
                    Ok(if op == "starts" {
                        Selector::StartsWith(label, value)
                    } else {
                        Selector::EndsWith(label, value)
                    })
                }
                _ => {
                    self.pos -= 1;
                    Err(self.error("expected an operator (==, !=, in, not in, contains, starts with, ends with)"))
                }
            },
            _ => {
                self.pos -= 1;
                Err(self.error("expected an operator after the label"))
            }
        }
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s),
            _ => {
                self.pos -= 1;
                Err(self.error("expected a quoted string"))
            }
        }
    }

    fn set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect(Token::LBrace, "'{'")?;
        let mut values = Vec::new();
        if self.peek() == Some(&Token::RBrace) {
            self.pos += 1;
            return Ok(values);
        }
        loop {
            values.push(self.string()?);
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::RBrace) => return Ok(values),
                _ => {
                    self.pos -= 1;
                    return Err(self.error("expected ',' or '}'"));
                }
            }
        }
    }
}
