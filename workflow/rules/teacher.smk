# The spectrogram teacher that vae.use_vf: domain and dit.repa (encoder: domain) align to. Built
# only when one of them asks for it; the low-data DiTs get one each, trained on their k images.


rule train_teacher:
    input:
        manifest="results/dataset/manifest.csv",
    output:
        teacher="results/teacher/teacher.pt",
        metrics="results/teacher/teacher.json",
        features=report(
            "results/teacher/features.png",
            caption="../report/teacher_features.rst",
            category="Teacher",
        ),
    log:
        "results/logs/train_teacher.log",
    benchmark:
        "results/benchmarks/train_teacher.tsv"
    conda:
        "../envs/mdgen.yaml"
    threads: 2
    resources:
        **config["resources"]["train_teacher"],
    params:
        out_dir=lambda wildcards, output: Path(output.teacher).parent,
        config=stage_config("teacher"),
        subset="",
    shell:
        "python -m mdgen.stages.train_teacher --manifest {input.manifest} --out-dir {params.out_dir}"
        " --config {params.config:q} {params.subset} > {log} 2>&1"


use rule train_teacher as train_teacher_low_data with:
    output:
        teacher="results/lowdata/k{k}/teacher/teacher.pt",
        metrics="results/lowdata/k{k}/teacher/teacher.json",
        features="results/lowdata/k{k}/teacher/features.png",
    log:
        "results/logs/train_teacher_k{k}.log",
    benchmark:
        "results/benchmarks/train_teacher_k{k}.tsv"
    params:
        out_dir=lambda wildcards, output: Path(output.teacher).parent,
        config=stage_config("teacher"),
        subset=lambda wildcards: f"--per-user {wildcards.k} --subset-seed {config['evaluation']['low_data_seed']}",
