# Observability tests that need more than a plain gtest run (included by tests/CMakeLists.txt).

# --- NVTX ranges, checked through an injection library -------------------------------------------
# kd_nvtx_recorder is loaded by NVTX itself (NVTX_INJECTION64_PATH) and logs domains, registered
# strings, categories and push/pop events to KD_NVTX_LOG; test_trace's NvtxInjection test runs a
# workload and checks that log. Run by hand without those variables, that test skips.
add_library(kd_nvtx_recorder SHARED ${CMAKE_CURRENT_LIST_DIR}/nvtx_recorder.cpp)
if(TARGET CUDA::nvtx3)
  target_link_libraries(kd_nvtx_recorder PRIVATE CUDA::nvtx3)
else()
  find_path(KD_NVTX3_INCLUDE nvtx3/nvToolsExt.h PATHS /usr/local/cuda/include REQUIRED)
  target_include_directories(kd_nvtx_recorder PRIVATE ${KD_NVTX3_INCLUDE})
endif()
target_compile_options(kd_nvtx_recorder PRIVATE ${KD_WARNINGS})
add_dependencies(test_trace kd_nvtx_recorder)

add_test(NAME nvtx_ranges COMMAND test_trace --gtest_filter=NvtxInjection.*)
set_tests_properties(nvtx_ranges PROPERTIES
  LABELS cpu
  ENVIRONMENT "NVTX_INJECTION64_PATH=$<TARGET_FILE:kd_nvtx_recorder>;KD_NVTX_LOG=${CMAKE_CURRENT_BINARY_DIR}/nvtx_ranges.log"
  # With the injection in place the test must run, not skip.
  FAIL_REGULAR_EXPRESSION "\\[  SKIPPED \\];\\[  PASSED  \\] 0 tests")

# --- TensorBoard files read back by TensorBoard itself ------------------------------------------
# A tiny CPU training run (test_trace) writes a run folder (log.jsonl + events); tools/check_tensorboard.py reads
# it with TensorBoard's EventAccumulator. KD_PYTHON (cache variable, defaulting to the KD_PYTHON
# environment variable, then python3) names a python with the tensorboard package; without the
# package, or without any python, the check is reported as skipped.
set(KD_PYTHON "$ENV{KD_PYTHON}" CACHE FILEPATH "Python with tensorboard (and matplotlib) for tools/ checks")
set(kd_python "${KD_PYTHON}")
if(NOT kd_python)
  find_program(KD_PYTHON3_EXECUTABLE NAMES python3 python)
  if(KD_PYTHON3_EXECUTABLE)
    set(kd_python "${KD_PYTHON3_EXECUTABLE}")
  endif()
endif()

set(kd_tb_run_dir ${CMAKE_CURRENT_BINARY_DIR}/tb_check_run)
add_test(NAME tensorboard_run_dir COMMAND test_trace --gtest_filter=Trace.TrainingRunForTensorBoard)
set_tests_properties(tensorboard_run_dir PROPERTIES
  LABELS cpu
  ENVIRONMENT "KD_KEEP_TB_DIR=${kd_tb_run_dir}"
  FIXTURES_SETUP kd_tb_run
  FAIL_REGULAR_EXPRESSION "\\[  SKIPPED \\];\\[  PASSED  \\] 0 tests")

# The same for a run cut short and resumed twice: TensorBoard must drop the orphaned points.
set(kd_tb_resume_dir ${CMAKE_CURRENT_BINARY_DIR}/tb_resume_run)
add_test(NAME tensorboard_resume_run_dir COMMAND test_trace --gtest_filter=Trace.ResumedRunForTensorBoard)
set_tests_properties(tensorboard_resume_run_dir PROPERTIES
  LABELS cpu
  ENVIRONMENT "KD_KEEP_TB_DIR=${kd_tb_resume_dir}"
  FIXTURES_SETUP kd_tb_resume
  FAIL_REGULAR_EXPRESSION "\\[  SKIPPED \\];\\[  PASSED  \\] 0 tests")

if(kd_python)
  add_test(NAME tensorboard_resume_python_check
           COMMAND ${kd_python} ${CMAKE_SOURCE_DIR}/tools/check_tensorboard.py --skip-code 77
                   --min-event-files 3 ${kd_tb_resume_dir})
  set_tests_properties(tensorboard_resume_python_check PROPERTIES
    LABELS cpu SKIP_RETURN_CODE 77 FIXTURES_REQUIRED kd_tb_resume)
  add_test(NAME tensorboard_python_check
           COMMAND ${kd_python} ${CMAKE_SOURCE_DIR}/tools/check_tensorboard.py --skip-code 77 ${kd_tb_run_dir})
  add_test(NAME plot_run_renders
           COMMAND ${kd_python} ${CMAKE_SOURCE_DIR}/tools/plot_run.py --skip-code 77
                   --out ${CMAKE_CURRENT_BINARY_DIR}/tb_check_run.png ${kd_tb_run_dir})
  set_tests_properties(tensorboard_python_check plot_run_renders PROPERTIES
    LABELS cpu SKIP_RETURN_CODE 77 FIXTURES_REQUIRED kd_tb_run)
else()
  foreach(t tensorboard_python_check tensorboard_resume_python_check plot_run_renders)
    add_test(NAME ${t} COMMAND ${CMAKE_COMMAND} -E echo "KD_SKIP: no python found; set KD_PYTHON")
    set_tests_properties(${t} PROPERTIES LABELS cpu SKIP_REGULAR_EXPRESSION "KD_SKIP:")
  endforeach()
endif()
