"""The Hugging Face Hub side of a saved model: its model card (card: the README.md every saved model
folder gets, written from its run) and publishing it (publish: `warmstart push`, `finetune
--push-to-hub`).

    card        README.md from config.yaml, metrics.json and the model's config: YAML metadata the
                Hub reads (base model, pipeline tag, model-index with the test metrics), then what
                the model does, its data, training, evaluation, limits and how to use it
    publish     create the repo and upload the model folder (and its ONNX export) with
                huggingface_hub; every refusal is one line

Placed above serving and below the tasks: it reads run folders and model folders (runs, models,
inference.export) and never a task kind."""
