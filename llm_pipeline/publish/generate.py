"""Try a published model: generate text with Hugging Face transformers.

python -m llm_pipeline.publish.generate <model URI> --prompt "def main(" [--version v...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile

from llm_pipeline.publish.registry import resolve_model_folder
from llm_pipeline.publish.verify import verify
from llm_pipeline.storage.folders import bounded


def generate(
    model_uri: str,
    prompt: str,
    version: str | None = None,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    top_k: int = 50,
    seed: int = 0,
) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model_folder(model_uri, version)
    problems = verify(folder)  # every file regular, inside the folder and as published, before transformers reads it
    if problems:
        raise ValueError(f"{folder.uri} fails verification: {'; '.join(problems[:5])}")
    with tempfile.TemporaryDirectory() as tmp:
        local = folder.local_path()
        if local is None:
            folder.download_dir(tmp)
            local = tmp
        tokenizer = AutoTokenizer.from_pretrained(local, local_files_only=True, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(local, local_files_only=True, trust_remote_code=False).eval()
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        torch.manual_seed(seed)
        out = model.generate(
            ids,
            max_new_tokens=max_new_tokens,
            do_sample=temperature > 0,
            temperature=temperature or None,
            top_k=top_k,
            pad_token_id=tokenizer.eos_token_id,
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate text from a published model.")
    parser.add_argument("model_uri", help="<registry>/<name> (latest version) or a version folder")
    parser.add_argument("--prompt", default="def ")
    parser.add_argument("--version", default=None)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args(argv)
    try:
        text = generate(a.model_uri, a.prompt, a.version, a.max_new_tokens, a.temperature, a.top_k, a.seed)
    except (ValueError, OSError) as e:
        print(f"error: {bounded(str(e), 2000)}", file=sys.stderr)
        return 1
    print(a.prompt + text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
