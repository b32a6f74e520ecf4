//! Chat prompts: the model's own `tokenizer.chat_template` (a Jinja template from the GGUF
//! metadata) rendered with minijinja, the way Hugging Face's `apply_chat_template` does.
use anyhow::{Context, Result};
use minijinja::{context, Environment, ErrorKind};
use polyllm_common::openai::Message;

/// A compiled chat template.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: Option<String>, eos_token: Option<String>) -> Result<Self> {
        let mut env = Environment::new();
        // Python-style string methods (`.strip()`, `.startswith()`...) that HF templates use.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_template_owned("chat".to_string(), source.to_string()).context("invalid chat template")?;
        Ok(ChatTemplate { env, bos_token: bos_token.unwrap_or_default(), eos_token: eos_token.unwrap_or_default() })
    }

    /// Renders `messages` and, with `add_generation_prompt`, the opening of the assistant's turn.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.env.get_template("chat")?;
        let out = tmpl
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token,
                eos_token => self.eos_token,
            })
            .context("rendering the chat template")?;
        Ok(out)
    }

    /// The BOS token text, so callers do not add a second BOS when the template wrote one.
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen2.5's ChatML template, as it appears in the GGUF metadata (abridged to the branches
    /// without tools, which is what a chat request exercises).
    const CHATML: &str = "{%- if messages[0]['role'] == 'system' %}\n    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n{%- else %}\n    {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n{%- endif %}\n{%- for message in messages %}\n    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\") %}\n        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n    {%- endif %}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n";

    #[test]
    fn chatml_renders_like_transformers() {
        let t = ChatTemplate::new(CHATML, None, Some("<|im_end|>".into())).unwrap();
        let out = t.render(&[Message::user("Hi there")], true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        );
        let sys = [Message { role: "system".into(), content: "Be brief.".into() }, Message::user("x")];
        let out = t.render(&sys, false).unwrap();
        assert!(out.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nx<|im_end|>\n"));
        assert!(!out.contains("assistant"));
    }

    #[test]
    fn python_string_methods_and_raise_exception_work() {
        let t = ChatTemplate::new("{{ messages[0].content.strip().upper() }}{{ bos_token }}", Some("<s>".into()), None)
            .unwrap();
        assert_eq!(t.render(&[Message::user("  a b  ")], false).unwrap(), "A B<s>");
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", None, None).unwrap();
        let err = format!("{:#}", t.render(&[Message::user("x")], false).unwrap_err());
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn a_broken_template_is_an_error_at_load() {
        assert!(ChatTemplate::new("{% for %}", None, None).is_err());
    }
}
