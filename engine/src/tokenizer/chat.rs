//! The ChatML chat format (Qwen2.5, SmolLM2), rendered in Rust.
//!
//! We do not run the Jinja template in `tokenizer_config.json`; we read from
//! it only the default system prompt that the template inserts when a
//! conversation has none.

use serde::{Deserialize, Serialize};

/// The ChatML template we write into new model folders, for other tools.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.to_string(),
            content: content.to_string(),
        }
    }
}

/// ChatML rendering with the model's default system prompt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatTemplate {
    /// Inserted as the first message when a conversation has no system message.
    pub default_system: Option<String>,
}

impl ChatTemplate {
    /// Reads the default system prompt out of a Jinja ChatML template: the
    /// first literal `<|im_start|>system\n...<|im_end|>` with no template
    /// code inside.
    pub fn from_jinja(template: &str) -> ChatTemplate {
        const OPEN: &str = "<|im_start|>system";
        let mut rest = template;
        while let Some(at) = rest.find(OPEN) {
            rest = &rest[at + OPEN.len()..];
            let body = rest
                .strip_prefix("\\n")
                .or_else(|| rest.strip_prefix('\n'))
                .unwrap_or(rest);
            if let Some(end) = body.find("<|im_end|>") {
                let text = &body[..end];
                if !text.is_empty() && !text.contains(['\'', '"', '{', '}', '+']) {
                    return ChatTemplate {
                        default_system: Some(text.replace("\\n", "\n")),
                    };
                }
            }
        }
        ChatTemplate::default()
    }

    /// Renders `messages` (adding the default system prompt if none is
    /// given); with `add_generation_prompt` it ends with the assistant header.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> String {
        let mut out = String::new();
        let has_system = messages.first().is_some_and(|m| m.role == "system");
        if let (false, Some(sys)) = (has_system, &self.default_system) {
            push_turn(&mut out, "system", sys);
        }
        for m in messages {
            push_turn(&mut out, &m.role, &m.content);
        }
        if add_generation_prompt {
            out.push_str("<|im_start|>assistant\n");
        }
        out
    }
}

fn push_turn(out: &mut String, role: &str, content: &str) {
    out.push_str("<|im_start|>");
    out.push_str(role);
    out.push('\n');
    out.push_str(content);
    out.push_str("<|im_end|>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_default_system_prompt_in_qwen_and_smollm_templates() {
        let qwen = r#"{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}{%- endif %}"#;
        assert_eq!(
            ChatTemplate::from_jinja(qwen).default_system.as_deref(),
            Some("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
        );
        let smol = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}";
        assert_eq!(
            ChatTemplate::from_jinja(smol).default_system.as_deref(),
            Some("You are a helpful AI assistant named SmolLM, trained by Hugging Face")
        );
        assert_eq!(
            ChatTemplate::from_jinja(CHATML_TEMPLATE).default_system,
            None
        );
    }

    #[test]
    fn renders_chatml_with_generation_prompt() {
        let t = ChatTemplate {
            default_system: Some("Be brief.".into()),
        };
        let s = t.render(&[Message::new("user", "Hi")], true);
        assert_eq!(
            s,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let s = t.render(
            &[Message::new("system", "X"), Message::new("user", "Hi")],
            false,
        );
        assert!(s.starts_with("<|im_start|>system\nX<|im_end|>"));
    }
}
