"""The top-level keys DeepSpeed 0.19.8 (pinned) reads from its JSON config: the keys its ``DeepSpeedConfig`` looks
up, and the key names of its config constant modules (which include some nested names, so this errs on the side of
accepting). ``tests/test_deepspeed_keys.py`` recomputes the set from the installed DeepSpeed, so it cannot drift."""

from __future__ import annotations

import difflib

KNOWN_TOP_LEVEL = frozenset(
    """
activation_checkpointing aio amp arg_mappings attention_mask auto auto_cast autotuning autotuning_exps
autotuning_results batch bf16 bf16_master_weights_and_grads bf16_optimizer_states bfloat16 block_size buffer_dtype
ccl check_overflow checkpoint cluster clustering_type comet comms_logger communication_data_type compile
compression_training consecutive_hysteresis consumed_layer_tokens consumed_samples contiguous_memory_optimization
cpu_checkpointing csv_monitor current_difficulties current_difficulty current_steps current_value
curriculum_learning curriculum_metrics curriculum_step custom data_cluster_current_position data_cluster_path
data_cluster_paths data_efficiency data_parallel_group data_routing data_sampling data_types dataloader
dataloader_drop_last datastates_ckpt ddp_bf16 debug detailed difficulty difficulty_step difficulty_type
disable_allgather disable_python_gc ds_config ds_pipe_replicated dtype dump_state dynamic_batching eigenvalue
elasticity enabled encode end_profile_step eval expert_parallel exps_dir fast fixed_discrete fixed_linear fixed_root
flops flops_profiler forward fp16 fp16_master_weights_and_grads fp32 global global_batch_size global_rank gloo
grad_accum_dtype gradient_accumulation_steps gradient_allreduce_op gradient_clipping gradient_predivide_factor
graph_harvesting gridsearch hccl hidden_size hidden_state_order hybrid_engine hysteresis immediate_grad_update
index_to_metric_path index_to_sample_path initial_scale_power intra_op_parallelism keep_in_fp32_modules latency
layer_token_lr_schedule legacy_fusion linear load_universal log_level loss_scale loss_scale_window
lower_precision_safe_modules lr_scaling_method managed_gradient_accumulation max_batch_size max_difficulty
max_grad_norm max_step max_tokens max_train_batch_size max_train_micro_batch_size_per_gpu max_value mean
memory_breakdown metric metric_path metrics_path micro_batch_size min_batch_size min_difficulty min_loss_scale
min_train_batch_size min_train_micro_batch_size_per_gpu min_value model_based model_info model_info_path
model_mask_name model_type module_depth mp_size mpi nccl nebula np_rng_state num_epochs num_layers num_params
num_tuning_micro_batch_sizes num_workers number_checkpoints optimizer output_file overlap_events overwrite
parallel_write param_dtype params partition_activations percentile pin_memory pipeline pipeline_stage predict
prescale_gradients prof_all prof_ops profile profile_step progressive_layer_drop quantize_training queue_depth
random random_ltd random_ltd_layer_id random_ltd_layer_num random_ltd_schedule recompute_fwd_factor require_steps
results_dir root_degree sample_idx sccl schedule_config schedule_type scheduler seed
seq_parallel_communication_data_type seq_per_step sequence_picking_order single_cluster single_submit
sparse_attention sparse_gradients start_profile_step step steps_per_print sum synchronize_checkpoint_boundary
tag_validation tensor_parallel tensorboard throughput timers top_modules torch_autocast total_curriculum_step
total_layer_num total_layer_tokens train train_batch_size train_micro_batch_size_per_gpu tuner_early_stopping
tuner_num_trials tuner_type type use_data_before_expert_parallelism use_gds use_node_local_storage value verbose
vocabulary_size wall_clock_breakdown wandb warmup_layer_tokens warmup_type weight_quantization z
zero_allow_untested_optimizer zero_force_ds_cpu_optimizer zero_optimization
""".split()
)


def unknown_key_message(key: str) -> str:
    """One line for a top-level key DeepSpeed does not read, with the closest known keys."""
    close = difflib.get_close_matches(key, sorted(KNOWN_TOP_LEVEL), n=2, cutoff=0.75)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return (
        f"{key}: unknown DeepSpeed key (DeepSpeed ignores keys it does not read, so the setting would have no "
        f"effect){hint} Our own keys go under mta."
    )
